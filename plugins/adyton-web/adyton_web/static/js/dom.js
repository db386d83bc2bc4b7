// Small DOM helpers: elements are built with text nodes only (never
// innerHTML), so text from the server or the model cannot become markup.

export const $ = (id) => document.getElementById(id);

/** h("p", {class: "x", "aria-label": "y"}, "text", child, ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const fmt = new Intl.NumberFormat("en");

export function number(n) {
  return n === undefined || n === null || Number.isNaN(n) ? "–" : fmt.format(n);
}

/** A labelled <meter>-like bar: "used of limit". */
export function gauge(label, used, limit) {
  const id = "g-" + Math.random().toString(36).slice(2);
  const unlimited = !limit;
  return h("div", { class: "gauge" },
    h("label", { for: id }, label),
    h("progress", { id, max: unlimited ? 1 : limit, value: unlimited ? 0 : Math.min(used, limit) },
      `${used} of ${limit}`),
    h("span", { class: "gauge-text" },
      unlimited ? `${number(used)} (no limit)` : `${number(used)} of ${number(limit)}`));
}
