// tasks-server API docs: renders openapi.json (same origin) without any third-party code.
"use strict";

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
  }
  return node;
};

let components = {};

function resolve(schema) {
  let seen = 0;
  while (schema && schema.$ref && seen++ < 32) {
    schema = components[schema.$ref.split("/").pop()] || {};
  }
  return schema || {};
}

function typeName(schema) {
  if (schema.$ref) return schema.$ref.split("/").pop();
  const s = schema;
  const alternatives = s.anyOf || s.oneOf;
  if (alternatives) return alternatives.map(typeName).join(" | ");
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (s.type === "array") return `array of ${typeName(s.items || {})}`;
  if (Array.isArray(s.type)) return s.type.join(" | ");
  return s.type || "any";
}

function rules(schema) {
  const parts = [];
  const names = {
    minimum: "≥", maximum: "≤", minLength: "min length", maxLength: "max length",
    minItems: "min items", maxItems: "max items", pattern: "pattern", default: "default",
    minProperties: "min keys", maxProperties: "max keys",
  };
  for (const [key, label] of Object.entries(names)) {
    if (schema[key] !== undefined && schema[key] !== null) {
      parts.push(`${label} ${JSON.stringify(schema[key])}`);
    }
  }
  if (schema.description) parts.unshift(schema.description);
  return parts.join("; ");
}

function nestedObjects(schema) {
  const found = [];
  const visit = (s) => {
    if (!s) return;
    if (s.$ref) found.push(s.$ref.split("/").pop());
    for (const sub of [...(s.anyOf || []), ...(s.oneOf || []), s.items]) visit(sub);
  };
  visit(schema);
  return found;
}

function schemaView(schema, depth = 0, name = null) {
  const resolved = resolve(schema);
  const title = name || typeName(schema);
  if (!resolved.properties) {
    return el("p", {}, el("code", {}, typeName(schema)), " ", rules(resolved));
  }
  const required = new Set(resolved.required || []);
  const rows = Object.entries(resolved.properties).map(([key, prop]) => {
    const children = depth < 4 ? nestedObjects(prop).map((ref) => schemaView({ $ref: `#/${ref}` }, depth + 1, ref)) : [];
    return el("tr", {},
      el("td", {}, el("code", {}, key), required.has(key) ? el("span", { class: "req" }, " *") : null),
      el("td", {}, el("code", {}, typeName(prop))),
      el("td", {}, rules(resolve(prop)), ...children));
  });
  const table = el("table", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"), el("th", {}, "rules")), ...rows);
  if (depth === 0) return table;
  return el("details", { class: "schema" }, el("summary", {}, title), table);
}

function curlExample(method, path, op) {
  const lines = [`curl -X ${method.toUpperCase()} "$TASKS_URL${path.replace("{task_id}", "$TASK_ID")}"`];
  const auth = (op.security || []).map((s) => Object.keys(s)).flat();
  if (auth.includes("ownerKey")) {
    lines.push('  -H "Authorization: Bearer $TASKS_KEY"', '  -H "X-Tasks-Owner-Id: $TASKS_OWNER_ID"');
  } else if (auth.includes("adminKey")) {
    lines.push('  -H "Authorization: Bearer $ADMIN_KEY"');
  }
  if (op.requestBody) lines.push('  -H "Content-Type: application/json" -d @body.json');
  return lines.join(" \\\n");
}

function operationView(method, path, op, pathParams) {
  const body = el("div");
  if (op.description) body.append(el("p", {}, op.description));
  const auth = (op.security || []).map((s) => Object.keys(s).join(" + ")).filter(Boolean);
  body.append(el("p", { class: "muted" }, "Authentication: ", auth.length ? auth.join(" or ") : "none"));
  const params = [...pathParams, ...(op.parameters || [])];
  if (params.length) {
    body.append(el("h4", {}, "Parameters"), el("table", {},
      el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "type"), el("th", {}, "rules")),
      ...params.map((p) => el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
        el("td", {}, el("code", {}, typeName(p.schema || {}))), el("td", {}, p.description || rules(p.schema || {}))))));
  }
  if (op.requestBody) {
    const schema = op.requestBody.content["application/json"].schema;
    body.append(el("h4", {}, `Request body: ${typeName(schema)}`), schemaView(schema));
  }
  body.append(el("h4", {}, "Responses"));
  for (const [status, answer] of Object.entries(op.responses || {})) {
    const content = answer.content || {};
    const media = Object.keys(content)[0];
    const schema = media ? content[media].schema : null;
    body.append(el("p", {}, el("strong", {}, status), ` ${answer.description}`,
      schema ? el("span", { class: "muted" }, ` — ${media}: `, el("code", {}, typeName(schema))) : null));
    if (schema && status.startsWith("2") && resolve(schema).properties) body.append(schemaView(schema, 1, typeName(schema)));
  }
  body.append(el("h4", {}, "Example"), el("pre", {}, curlExample(method, path, op)));
  const id = `${method}-${path}`.replace(/[^A-Za-z0-9]+/g, "-");
  const label = `${method.toUpperCase()} ${path} — ${op.summary || ""}`;
  return el("details", { class: "op", id, "data-label": label },
    el("summary", {}, el("span", { class: `method ${method}` }, method.toUpperCase()),
      el("span", { class: "path" }, path), op.summary || ""), body);
}

function render(spec) {
  components = (spec.components || {}).schemas || {};
  document.getElementById("title").textContent = `${spec.info.title} ${spec.info.version}`;
  document.getElementById("description").textContent = spec.info.description || "";
  const main = document.getElementById("operations");
  const toc = document.getElementById("toc");
  main.replaceChildren();
  const byTag = new Map((spec.tags || []).map((t) => [t.name, []]));
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (method === "parameters") continue;
      const tag = (op.tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operationView(method, path, op, item.parameters || []));
    }
  }
  for (const [tag, views] of byTag) {
    main.append(el("h2", { id: `tag-${tag}` }, tag), ...views);
    for (const view of views) {
      toc.append(el("a", { href: `#${view.id}` }, view.dataset.label));
    }
  }
  openFromHash();
}

// a link to #<operation> opens that operation
function openFromHash() {
  const target = location.hash ? document.getElementById(location.hash.slice(1)) : null;
  if (target && target.tagName === "DETAILS") {
    target.open = true;
    target.scrollIntoView();
  }
}

window.addEventListener("hashchange", openFromHash);

fetch("openapi.json")
  .then((response) => response.json())
  .then(render)
  .catch((error) => {
    document.getElementById("operations").textContent = `Could not load openapi.json: ${error}`;
  });
