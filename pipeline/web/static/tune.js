// autolabel tune: edit settings, run them on the sample images, compare with the previous try.
let fields = [];

function renderFields(settings) {
  fields = settings.fields;
  const form = $("settings");
  form.replaceChildren(...fields.map((field) => el("label", {},
    el("span", { text: field.label }),
    el("input", { type: "number", id: field.key, name: field.key, value: field.value,
                  step: field.type === "int" ? "1" : "0.01", min: "0" }))));
}

function currentSettings() {
  const settings = {};
  for (const field of fields) {
    const value = Number($(field.key).value);
    settings[field.key] = field.type === "int" ? Math.round(value) : value;
  }
  return settings;
}

function renderTry(attempt, title) {
  const box = el("div", { class: "try", "data-try": attempt.number, "data-masks": attempt.masks });
  box.append(el("h3", { text: `${title}: try ${attempt.number}` }));
  box.append(el("div", { class: "stat" }, "masks: ", el("b", { class: "masks", text: attempt.masks }),
    ` · ${(attempt.seconds_per_image * 1000).toFixed(0)} ms per image`));
  box.append(el("pre", { class: "command", text: attempt.args || "(the starting settings)" }));
  const images = el("div", { class: "images" });
  attempt.images.forEach((image, index) => {
    images.append(el("figure", {},
      el("img", { src: `/api/tries/${attempt.number}/${index}.png`, alt: image.name }),
      el("figcaption", image.error
        ? { class: "error-text", text: `${image.name}: not labelled: ${image.error}` }
        : { text: `${image.name}: ${image.masks} masks, ${(image.seconds * 1000).toFixed(0)} ms` })));
  });
  box.append(images);
  return box;
}

function renderTries(tries) {
  const latest = tries.slice(-2).reverse();
  const titles = ["latest", "previous"];
  $("tries").replaceChildren(...latest.map((attempt, i) => renderTry(attempt, titles[i])));
  if (latest.length) {
    $("args").textContent = latest[0].args;
    $("preset").value = latest[0].preset_yaml;
  }
}

async function runTry() {
  $("run").disabled = true;
  $("status").textContent = "running…";
  try {
    await getJSON("/api/tries", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ settings: currentSettings() }),
    });
    renderTries(await getJSON("/api/tries"));
    $("status").textContent = "";
  } catch (error) {
    $("status").textContent = "error: " + error.message;
  } finally {
    $("run").disabled = false;
    document.body.dataset.tries = document.querySelectorAll(".try").length;
  }
}

async function start() {
  const settings = await getJSON("/api/settings");
  $("input-uri").textContent = settings.input;
  $("base").textContent = `preset ${settings.preset ?? "default"} ${settings.overrides.join(" ")}`;
  $("images").textContent = `sample images: ${settings.images.join(", ")}`;
  renderFields(settings);
  renderTries(await getJSON("/api/tries"));
  document.body.dataset.ready = "1";
}

$("run").addEventListener("click", runTry);
$("settings").addEventListener("submit", (event) => { event.preventDefault(); runTry(); });
$("copy-args").addEventListener("click", () => copyText($("args").textContent, $("copied-args")));
$("copy-preset").addEventListener("click", () => copyText($("preset").value, $("copied-preset")));
start();
