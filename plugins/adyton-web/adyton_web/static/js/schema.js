// A check of a parsed answer against the common JSON-schema keywords (type,
// properties, required, additionalProperties, items, enum, const,
// minimum/maximum, minLength/maxLength). The server enforced the schema
// while generating; this shows the person that the answer really matches.
// Keywords outside this list are not checked here.

const TYPES = {
  object: (v) => v !== null && typeof v === "object" && !Array.isArray(v),
  array: Array.isArray,
  string: (v) => typeof v === "string",
  number: (v) => typeof v === "number",
  integer: Number.isInteger,
  boolean: (v) => typeof v === "boolean",
  null: (v) => v === null,
};

export function checkSchema(value, schema, path = "$") {
  const problems = [];
  if (!schema || typeof schema !== "object") return problems;
  if (schema.type) {
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    if (!types.some((t) => TYPES[t] && TYPES[t](value))) {
      return [`${path} should be ${types.join(" or ")}`];
    }
  }
  if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value))) {
    problems.push(`${path} is not one of the allowed values`);
  }
  if ("const" in schema && JSON.stringify(schema.const) !== JSON.stringify(value)) {
    problems.push(`${path} should be ${JSON.stringify(schema.const)}`);
  }
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) problems.push(`${path} is below ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum) problems.push(`${path} is above ${schema.maximum}`);
  }
  if (typeof value === "string") {
    if (schema.minLength !== undefined && value.length < schema.minLength) problems.push(`${path} is too short`);
    if (schema.maxLength !== undefined && value.length > schema.maxLength) problems.push(`${path} is too long`);
  }
  if (TYPES.object(value)) {
    for (const key of schema.required || []) {
      if (!(key in value)) problems.push(`${path}.${key} is missing`);
    }
    const props = schema.properties || {};
    for (const [key, item] of Object.entries(value)) {
      if (key in props) problems.push(...checkSchema(item, props[key], `${path}.${key}`));
      else if (schema.additionalProperties === false) problems.push(`${path}.${key} is not allowed`);
    }
  }
  if (Array.isArray(value) && schema.items) {
    value.forEach((item, i) => problems.push(...checkSchema(item, schema.items, `${path}[${i}]`)));
  }
  return problems;
}
