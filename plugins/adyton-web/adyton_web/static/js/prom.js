// The Prometheus text exposition format (what /metrics serves), parsed into
// samples: [{name, labels: {..}, value}].

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?/g;

function unescape(value) {
  return value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
}

function parseValue(text) {
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  return Number(text);
}

export function parseMetrics(text) {
  const samples = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const m = LINE.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      for (const l of m[3].matchAll(LABEL)) labels[l[1]] = unescape(l[2]);
    }
    samples.push({ name: m[1], labels, value: parseValue(m[4]) });
  }
  return samples;
}

/** Sum of the samples named `name`, grouped by the label `by` (or in total). */
export function sumBy(samples, name, by) {
  const out = {};
  for (const s of samples) {
    if (s.name !== name) continue;
    const key = by ? (s.labels[by] ?? "") : "";
    out[key] = (out[key] || 0) + s.value;
  }
  return by ? out : (out[""] || 0);
}

/**
 * A histogram's buckets as counts per bucket (not cumulative):
 * [{le, count}], plus its count and sum.
 */
export function histogram(samples, name) {
  const cumulative = samples.filter((s) => s.name === `${name}_bucket`)
    .map((s) => ({ le: parseValue(s.labels.le), value: s.value }))
    .sort((a, b) => a.le - b.le);
  const buckets = cumulative.map((b, i) => ({ le: b.le, count: b.value - (i ? cumulative[i - 1].value : 0) }));
  return { buckets, count: sumBy(samples, `${name}_count`), sum: sumBy(samples, `${name}_sum`) };
}
