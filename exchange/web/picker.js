// The instrument picker: GPU model x region x product x delivery, from GET /instruments.

import * as fmt from "./format.js";
import { state } from "./state.js";
import { $ } from "./views.js";

function order(values, preferred) {
  const rank = new Map(preferred.map((v, i) => [v, i]));
  return [...values].sort((a, b) => (rank.get(a) ?? 99) - (rank.get(b) ?? 99) || (a < b ? -1 : 1));
}

function gpuOrder() {
  return order(
    new Set(state.instruments.map((i) => i.gpu)),
    state.catalog.gpus.map((g) => g.model),
  );
}

/** The first delivery of the catalog's first GPU model, region and product. */
export function defaultSymbol() {
  const gpu = gpuOrder()[0];
  const pick = (list, key, preferred) => order(new Set(list.map((i) => i[key])), preferred)[0];
  let list = state.instruments.filter((i) => i.gpu === gpu);
  const region = pick(list, "region", state.catalog.regions);
  list = list.filter((i) => i.region === region);
  const product = pick(list, "product", state.catalog.products.map((p) => p.code));
  list = list.filter((i) => i.product === product);
  list.sort((a, b) => (BigInt(a.start_ns) < BigInt(b.start_ns) ? -1 : 1));
  return list[0]?.symbol ?? null;
}

function setOptions(select, values, selected, label = (v) => v) {
  select.innerHTML = values
    .map((v) => `<option value="${fmt.esc(v)}">${fmt.esc(label(v))}</option>`)
    .join("");
  select.value = values.includes(selected) ? selected : (values[0] ?? "");
}

/** Fill the four selects for `inst` (or keep the choices made so far when it is null). */
export function fillPicker(inst) {
  const gpu = inst?.gpu ?? $("pick-gpu").value;
  setOptions($("pick-gpu"), gpuOrder(), gpu);
  let list = state.instruments.filter((i) => i.gpu === $("pick-gpu").value);
  const regions = order(new Set(list.map((i) => i.region)), state.catalog.regions);
  setOptions($("pick-region"), regions, inst?.region ?? $("pick-region").value);
  list = list.filter((i) => i.region === $("pick-region").value);
  const codes = state.catalog.products.map((p) => p.code);
  const products = order(new Set(list.map((i) => i.product)), codes);
  setOptions($("pick-product"), products, inst?.product ?? $("pick-product").value);
  list = list.filter((i) => i.product === $("pick-product").value);
  list.sort((a, b) => (BigInt(a.start_ns) < BigInt(b.start_ns) ? -1 : 1));
  const product = $("pick-product").value;
  const labels = new Map(list.map((i) => [i.symbol, fmt.delivery(i.start_ns, product)]));
  const previous = state.bySymbol.get(state.symbol);
  // Keep the delivery time when only the model, region or product changed, where it exists.
  const sameStart = list.find((i) => previous && i.start_ns === previous.start_ns)?.symbol;
  setOptions(
    $("pick-delivery"),
    list.map((i) => i.symbol),
    inst?.symbol ?? sameStart,
    (s) => labels.get(s),
  );
}
