// autolabel view: sliders → query string → counts, histograms, command, thumbnails.
const SVG = "http://www.w3.org/2000/svg";
const state = { page: 0, perPage: 24, pages: 1, summary: null, detailId: null, seq: 0, compare: null };

function filterParams() {
  const params = new URLSearchParams();
  for (const id of ["min_predicted_iou", "min_stability_score", "min_box_iou"]) {
    const value = Number($(id).value);
    if (value > 0) params.set(id, value.toFixed(2));
  }
  const topK = Number($("top_k").value);
  if (topK > 0) params.set("top_k", String(topK));
  const fraction = $("area-unit").value === "fraction";
  const low = $("area-min").value, high = $("area-max").value;
  if (low !== "") params.set(fraction ? "min_area_fraction" : "min_area", low);
  if (high !== "") params.set(fraction ? "max_area_fraction" : "max_area", high);
  const chosen = [...document.querySelectorAll("#categories input:checked")].map((box) => box.value);
  const all = document.querySelectorAll("#categories input").length;
  if (chosen.length && chosen.length < all) params.set("categories", chosen.join(","));
  return params;
}

function showSliderValues() {
  for (const id of ["min_predicted_iou", "min_stability_score", "min_box_iou", "top_k"]) {
    const value = Number($(id).value);
    $(id + "-value").textContent = value > 0 ? (id === "top_k" ? value : value.toFixed(2)) : "off";
  }
}

function drawHistogram(svg, histogram, threshold) {
  svg.replaceChildren();
  const first = histogram.edges[0], last = histogram.edges[histogram.edges.length - 1];
  const label = svg.previousElementSibling;
  if (label) label.dataset.range = `${first} … ${last}`;
  const width = 300, height = 70, bins = histogram.all.length;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const top = Math.max(1, ...histogram.all);
  const barWidth = width / bins;
  for (const [kind, counts] of [["all", histogram.all], ["kept", histogram.kept]]) {
    counts.forEach((count, i) => {
      if (!count) return;
      const barHeight = Math.max(1, (count / top) * (height - 4));
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("class", kind);
      rect.setAttribute("x", i * barWidth + 0.5);
      rect.setAttribute("y", height - barHeight);
      rect.setAttribute("width", Math.max(1, barWidth - 1));
      rect.setAttribute("height", barHeight);
      svg.append(rect);
    });
  }
  if (threshold !== null) {
    const edges = histogram.edges, lo = edges[0], hi = edges[edges.length - 1];
    const x = ((threshold - lo) / (hi - lo)) * width;
    const line = document.createElementNS(SVG, "line");
    line.setAttribute("class", "cut");
    line.setAttribute("x1", x); line.setAttribute("x2", x);
    line.setAttribute("y1", 0); line.setAttribute("y2", height);
    svg.append(line);
  }
}

function areaThresholds() {
  // The area histogram is over log10(pixels): draw pixel bounds there.
  if ($("area-unit").value !== "pixels") return [];
  return [$("area-min").value, $("area-max").value]
    .filter((v) => v !== "" && Number(v) > 0).map((v) => Math.log10(Number(v)));
}

async function refreshSummary(seq) {
  const summary = await getJSON("/api/summary?" + filterParams());
  if (seq !== state.seq) return; // a newer refresh is on its way
  state.summary = summary;
  $("run-uri").textContent = summary.run;
  const count = $("run-count");
  count.dataset.kept = summary.kept_masks;
  count.dataset.total = summary.masks;
  count.innerHTML = `kept <b>${summary.kept_masks.toLocaleString()}</b> of ${summary.masks.toLocaleString()} masks,
    on ${summary.kept_images.toLocaleString()} of ${summary.images.toLocaleString()} images
    <span class="muted">(${summary.shards} shards, ${summary.images_error} error rows)</span>`;
  $("command").textContent = summary.command;
  if (summary.compare) showComparison(summary.compare);
  const value = (id) => (Number($(id).value) > 0 ? Number($(id).value) : null);
  drawHistogram($("hist-predicted_iou"), summary.histograms.predicted_iou, value("min_predicted_iou"));
  drawHistogram($("hist-stability_score"), summary.histograms.stability_score, value("min_stability_score"));
  const area = summary.histograms.log10_area;
  drawHistogram($("hist-log10_area"), area, null);
  for (const x of areaThresholds()) {
    const svg = $("hist-log10_area");
    const line = document.createElementNS(SVG, "line");
    const pos = ((x - area.edges[0]) / (area.edges[area.edges.length - 1] - area.edges[0])) * 300;
    line.setAttribute("class", "cut"); line.setAttribute("x1", pos); line.setAttribute("x2", pos);
    line.setAttribute("y1", 0); line.setAttribute("y2", 70); svg.append(line);
  }
  if (summary.prompted) {
    $("box-iou-control").hidden = false;
    drawHistogram($("hist-box_iou"), summary.histograms.box_iou, value("min_box_iou"));
    if (summary.categories.length && !$("categories").children.length) {
      $("category-control").hidden = false;
      for (const category of summary.categories) {
        const box = el("input", { type: "checkbox", value: category.id, checked: "" });
        box.addEventListener("change", refresh);
        $("categories").append(el("label", { class: "control" }, box,
          ` ${category.name ?? category.id} `, el("span", { class: "muted", text: `(${category.masks})` })));
      }
    }
  }
}

function showComparison(c) {
  const box = $("compare-summary");
  box.hidden = false;
  box.dataset.meanIou = c.mean_iou;
  const settings = Object.keys(c.settings_diff);
  box.replaceChildren("vs B ", el("b", { text: c.b }), ` · mean IoU of matched pairs ${c.mean_iou.toFixed(3)} · ` +
    `${c.matched} matched, ${c.only_a} only in A, ${c.only_b} only in B (IoU ≥ ${c.iou_bound}) · ` +
    (settings.length ? `settings that differ: ${settings.join(", ")}` : "same settings"));
}

async function refreshGrid(seq) {
  const params = filterParams();
  const query = new URLSearchParams(params);
  query.set("sort", $("sort").value);
  query.set("page", state.page);
  query.set("per_page", state.perPage);
  const page = await getJSON("/api/images?" + query);
  if (seq !== state.seq) return;
  state.pages = page.pages;
  $("page-label").textContent = `page ${page.page + 1} of ${page.pages}`;
  $("page-count").textContent = `${page.kept_on_page} kept masks on this page`;
  $("page-count").dataset.kept = page.kept_on_page;
  $("prev").disabled = page.page === 0;
  $("next").disabled = page.page + 1 >= page.pages;
  const tiles = page.images.map((image) => {
    const tile = el("div", { class: "tile" + (image.status === "error" ? " error" : ""), "data-image-id": image.image_id });
    if (image.status === "error") {
      tile.append(el("div", { class: "error-text", text: "could not be read" }));
    } else {
      tile.append(el("img", { src: `/api/images/${image.image_id}/thumb.png?${params}`, alt: image.name, loading: "lazy" }));
    }
    const mean = image.mean_iou === null ? "–" : image.mean_iou.toFixed(3);
    tile.append(el("div", { class: "caption" },
      el("span", { class: "name", text: image.name, title: image.name }),
      el("span", { class: "kept", title: "kept / all masks · mean predicted IoU of the kept",
                   text: `${image.kept}/${image.masks} · ${mean}` })));
    if (state.compare) tile.append(agreementCaption(image));
    tile.addEventListener("click", () => openDetail(image.image_id));
    return tile;
  });
  $("grid").replaceChildren(...tiles);
}

function maskText(mask, run) {
  return `${run}mask ${mask.mask_index}: predicted IoU ${mask.predicted_iou.toFixed(3)}, ` +
    `stability ${mask.stability_score.toFixed(3)}, area ${mask.area} px` +
    (mask.box_iou !== null ? `, box IoU ${mask.box_iou.toFixed(3)}` : "") +
    (mask.category ? `, ${mask.category}` : "") +
    (mask.match !== undefined ? `, pair IoU ${mask.pair_iou.toFixed(3)} with mask ${mask.match}` : "");
}

// One mask's outline and (optionally) its table row, pointing at each other on hover.
function maskPath(mask, hue, classes, text, row) {
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", mask.path);
  if (classes) path.setAttribute("class", classes);
  if (hue !== null) path.setAttribute("style", `fill: hsl(${hue} 85% 55%)`);
  path.dataset.maskIndex = mask.mask_index;
  if (mask.match !== undefined) path.dataset.match = mask.match;
  const activate = (on) => { path.classList.toggle("active", on); row?.classList.toggle("active", on); };
  path.addEventListener("mouseenter", (event) => { activate(true); showTooltip(event, text); });
  path.addEventListener("mousemove", (event) => showTooltip(event, text));
  path.addEventListener("mouseleave", () => { activate(false); $("tooltip").style.display = "none"; });
  path.addEventListener("click", () => { $("detail-info").textContent = text; });
  row?.addEventListener("mouseenter", () => activate(true));
  row?.addEventListener("mouseleave", () => activate(false));
  return path;
}

function maskRow(first, mask, last) {
  return el("tr", {},
    el("td", { text: first }), el("td", { text: mask.predicted_iou.toFixed(3) }),
    el("td", { text: mask.stability_score.toFixed(3) }), el("td", { text: mask.area }),
    el("td", { text: last }));
}

// Large masks first, so that every smaller one lies on top and can be pointed at.
function drawPaths(svg, detail, paths) {
  svg.setAttribute("viewBox", `0 0 ${detail.width} ${detail.height}`);
  paths.sort((a, b) => b[0] - a[0]);
  svg.replaceChildren(...paths.map(([, path]) => path));
}

function agreementCaption(image) {
  const agreement = image.agreement;
  if (!agreement) return el("div", { class: "caption agreement", "data-agreement": "",
    text: `not compared: ${image.not_compared ?? "not in B"}` });
  return el("div", { class: "caption agreement", "data-agreement": agreement.agreement,
    title: "agreement with B: matched pairs' IoU over the masks of both runs · masks only in A / only in B",
    text: `agreement ${agreement.agreement.toFixed(3)} · −${agreement.only_a} +${agreement.only_b}` });
}

async function openDetail(imageId) {
  state.detailId = imageId;
  if (state.compare) return openCompared(imageId);
  const detail = await getJSON(`/api/images/${imageId}/masks?${filterParams()}`);
  $("detail-title").textContent = detail.name;
  $("detail-info").textContent = detail.status === "error"
    ? `error: ${detail.error}` : `${detail.width}×${detail.height}, ${detail.masks.length} kept masks`;
  $("detail-image").src = `/api/images/${imageId}/image.png`;
  const extra = state.summary && state.summary.prompted ? "box IoU / category" : "";
  $("detail-extra-head").textContent = extra;
  const rows = [], paths = [];
  detail.masks.forEach((mask, i) => {
    const row = maskRow(mask.mask_index, mask,
      extra ? `${mask.box_iou?.toFixed(3) ?? ""} ${mask.category ?? ""}` : "");
    paths.push([mask.area, maskPath(mask, (i * 137.5) % 360, "", maskText(mask, ""), row)]);
    rows.push(row);
  });
  drawPaths($("detail-svg"), detail, paths);
  $("detail-masks").replaceChildren(...rows);
  $("detail").classList.add("open");
}

// --compare: A's masks and B's side by side (or A's outlines over B's masks); a matched
// pair shares its colour, a mask with no partner is red and dashed.
async function openCompared(imageId) {
  const view = await getJSON(`/api/images/${imageId}/compare?${filterParams()}`);
  const a = view.a, b = view.b, overlaid = $("overlay").checked;
  $("detail").classList.toggle("overlaid", overlaid);
  $("detail-title").textContent = a.name;
  const shown = view.shown, runs = view.runs;
  $("detail-info").textContent = a.status === "error" ? `error in A: ${a.error}`
    : `${a.width}×${a.height}, ${a.masks.length} kept masks in A, ${b ? b.masks.length : 0} in B`;
  $("compare-info").dataset.agreement = shown.agreement;
  let compared = `shown masks: agreement ${shown.agreement.toFixed(3)}, ` +
    `${shown.matched} matched, ${shown.only_a} only in A, ${shown.only_b} only in B`;
  if (!b) compared = "run B lacks this image";
  else if (b.status === "error") compared = `run B could not read this image: ${b.error}`;
  $("compare-info").textContent = compared +
    (runs ? ` · whole runs: agreement ${runs.agreement.toFixed(3)}` : "");
  $("detail-extra-head").textContent = "pair in B (IoU)";
  const hueOf = new Map(), rows = [], pathsA = [], pathsB = [];
  a.masks.forEach((mask, i) => {
    const hue = (i * 137.5) % 360;
    if (mask.match !== undefined) hueOf.set(mask.match, hue);
    const row = maskRow(mask.mask_index, mask,
      mask.match !== undefined ? `B ${mask.match} (${mask.pair_iou.toFixed(3)})` : "only in A");
    const classes = (overlaid ? "outline " : "") + (mask.match === undefined ? "only" : "");
    pathsA.push([mask.area, maskPath(mask, hue, classes.trim(), maskText(mask, "A "), row)]);
    rows.push(row);
  });
  for (const mask of b ? b.masks : []) {
    const row = mask.match === undefined ? maskRow(`B ${mask.mask_index}`, mask, "only in B") : null;
    const hue = mask.match === undefined ? null : hueOf.get(mask.mask_index);
    const classes = mask.match === undefined ? "only" : "";
    pathsB.push([mask.area, maskPath(mask, hue, classes, maskText(mask, "B "), row)]);
    if (row) rows.push(row);
  }
  $("detail-image").src = `/api/images/${imageId}/image.png`;
  $("detail-image-b").src = `/api/images/${imageId}/image.png`;
  $("stage-title-a").textContent = overlaid ? `outlines: A ${state.summary.run} · fills: B ${state.compare.b}`
    : `A: ${state.summary.run}`;
  $("stage-title-b").textContent = `B: ${state.compare.b}`;
  $("panel-b").hidden = overlaid || !b;
  if (overlaid) {
    // B's masks filled underneath, A's outlines on top (both still in area order).
    drawPaths($("detail-svg"), a, pathsB);
    $("detail-svg").append(...pathsA.sort((x, y) => y[0] - x[0]).map(([, path]) => path));
    $("detail-svg-b").replaceChildren();
  } else {
    drawPaths($("detail-svg"), a, pathsA);
    drawPaths($("detail-svg-b"), b ?? a, pathsB);
  }
  $("detail-masks").replaceChildren(...rows);
  $("detail").classList.add("open");
}

function showTooltip(event, text) {
  const tip = $("tooltip");
  tip.textContent = text;
  tip.style.display = "block";
  tip.style.left = event.clientX + 14 + "px";
  tip.style.top = event.clientY + 14 + "px";
}

function closeDetail() {
  $("detail").classList.remove("open");
  state.detailId = null;
}

async function refresh() {
  showSliderValues();
  const seq = ++state.seq;
  try {
    await Promise.all([refreshSummary(seq), refreshGrid(seq)]);
    if (state.detailId) await openDetail(state.detailId);
    // Tests (and scripts) wait for this: the page shows the results for these filters.
    if (seq === state.seq) document.body.dataset.ready = filterParams().toString() || "all";
  } catch (error) {
    $("run-count").textContent = "error: " + error.message;
  }
}

const refreshSoon = debounce(() => { state.page = 0; refresh(); }, 120);
for (const id of ["min_predicted_iou", "min_stability_score", "min_box_iou", "top_k"]) {
  $(id).addEventListener("input", () => { showSliderValues(); refreshSoon(); });
}
for (const id of ["area-min", "area-max", "area-unit"]) $(id).addEventListener("change", refreshSoon);
$("sort").addEventListener("change", () => { state.page = 0; refresh(); });
$("prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); refresh(); });
$("next").addEventListener("click", () => { state.page = Math.min(state.pages - 1, state.page + 1); refresh(); });
$("copy-command").addEventListener("click", () => copyText($("command").textContent, $("copied")));
$("close-detail").addEventListener("click", closeDetail);
document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeDetail(); });
$("reload").addEventListener("click", async () => { await getJSON("/api/reload", { method: "POST" }); refresh(); });
// With --compare, the page opens on the images that agree least.
async function start() {
  let summary;
  try {
    summary = await getJSON("/api/summary");
  } catch (error) {
    $("run-count").textContent = "error: " + error.message;
    return;
  }
  state.summary = summary;
  if (summary.compare) {
    state.compare = summary.compare;
    for (const [value, text] of [["agreement-asc", "worst agreement with B"], ["agreement-desc", "best agreement with B"]])
      $("sort").append(el("option", { value, text }));
    $("sort").value = "agreement-asc";
    $("detail").classList.add("compare");
    $("stage-title-a").hidden = false;
    $("overlay-control").hidden = false;
    $("overlay").addEventListener("change", () => { if (state.detailId) openDetail(state.detailId); });
  }
  refresh();
}
start();
