// The API page (/docs), drawn from /openapi.json with nothing fetched from elsewhere, so that it works offline:
// each endpoint's method, path, summary, description, and its form fields (type, default, limits).
"use strict";

const $ = (id) => document.getElementById(id);

function element(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (className) e.className = className;
  return e;
}

// "integer", "file", "list of file", "string or null", as a reader names a field's type
function typeName(s) {
  if (s.anyOf) return s.anyOf.map(typeName).join(" or ");
  if (s.type === "array") return `list of ${typeName(s.items || {})}`;
  if (s.contentMediaType || s.format === "binary") return "file";
  return s.type || "any";
}

function limits(s) {
  const said = [];
  if (s.minimum !== undefined) said.push(`>= ${s.minimum}`);
  if (s.maximum !== undefined) said.push(`<= ${s.maximum}`);
  if (s.pattern) said.push(`matches ${s.pattern}`);
  return said.join(", ");
}

// The form fields of an operation: the multipart (or urlencoded) body's schema, its $ref resolved.
function fields(op, spec) {
  const content = (op.requestBody && op.requestBody.content) || {};
  const body = content["multipart/form-data"] || content["application/x-www-form-urlencoded"];
  if (!body) return null;
  let schema = body.schema;
  if (schema.$ref) schema = spec.components.schemas[schema.$ref.split("/").pop()];
  const required = new Set(schema.required || []);
  const table = element("table");
  const heads = ["field", "type", "default", "limits", "what"];
  table.appendChild(element("tr")).append(...heads.map((h) => element("th", h)));
  for (const [name, s] of Object.entries(schema.properties || {})) {
    const need = required.has(name) ? "required" : s.default !== undefined ? `default ${JSON.stringify(s.default)}`
                                                                            : "optional";
    const row = table.appendChild(element("tr"));
    row.append(...[name, typeName(s), need, limits(s), s.description || ""].map((t) => element("td", t)));
  }
  return table;
}

function endpoint(path, method, op, spec) {
  const section = element("section");
  const title = section.appendChild(element("h2"));
  title.append(element("span", method.toUpperCase(), `method ${method}`), path);
  section.dataset.endpoint = `${method.toUpperCase()} ${path}`;
  if (op.summary) section.appendChild(element("div", op.summary, "muted"));
  if (op.description) section.appendChild(element("div", op.description, "description"));
  const form = fields(op, spec);
  if (form) section.append(element("div", "form fields (multipart/form-data)", "muted"), form);
  return section;
}

fetch("/openapi.json").then((r) => r.json()).then((spec) => {
  $("title").textContent = `${spec.info.title}: the API`;
  $("about").textContent = spec.info.description || "";
  for (const [path, ops] of Object.entries(spec.paths))
    for (const [method, op] of Object.entries(ops)) $("endpoints").appendChild(endpoint(path, method, op, spec));
  $("endpoints").dataset.state = "done";
}).catch((e) => {
  $("error").textContent = `cannot read /openapi.json: ${e.message || e}`;
  $("endpoints").dataset.state = "error";
});
