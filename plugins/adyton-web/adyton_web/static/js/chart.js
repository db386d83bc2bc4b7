// A bar chart as inline SVG (attributes only: no style attributes, which
// the Content-Security-Policy forbids).

import { svg, number } from "./dom.js";

/**
 * barChart([{label, value}], {title, width, height}) -> <svg role="img">
 * Labels are shown under the first, middle and last bars; every bar has a
 * <title> (its tooltip and accessible text).
 */
export function barChart(points, { title = "", width = 560, height = 160, unit = "" } = {}) {
  const pad = { left: 44, right: 8, top: 10, bottom: 22 };
  const w = width - pad.left - pad.right;
  const hgt = height - pad.top - pad.bottom;
  const max = Math.max(1, ...points.map((p) => p.value));
  const step = w / Math.max(1, points.length);
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, role: "img", class: "chart",
    "aria-label": `${title}: ${points.map((p) => `${p.label} ${p.value}`).join(", ")}`,
  });
  chart.append(svg("title", {}, title));
  chart.append(svg("line", { x1: pad.left, y1: pad.top + hgt, x2: pad.left + w, y2: pad.top + hgt, class: "axis" }));
  chart.append(svg("text", { x: pad.left - 4, y: pad.top + 8, "text-anchor": "end", class: "tick" }, number(max)));
  chart.append(svg("text", { x: pad.left - 4, y: pad.top + hgt, "text-anchor": "end", class: "tick" }, "0"));
  const show = new Set([0, Math.floor((points.length - 1) / 2), points.length - 1]);
  points.forEach((p, i) => {
    const bh = p.value > 0 ? Math.max(1, (p.value / max) * hgt) : 0;
    const x = pad.left + i * step + step * 0.15;
    const bar = svg("rect", { x, y: pad.top + hgt - bh, width: Math.max(1, step * 0.7), height: bh, class: "bar" });
    bar.append(svg("title", {}, `${p.label}: ${number(p.value)}${unit}`));
    chart.append(bar);
    if (show.has(i)) {
      chart.append(svg("text", { x: x + step * 0.35, y: height - 6, "text-anchor": "middle", class: "tick" }, p.label));
    }
  });
  return chart;
}
