// Shared by the view and tune pages: tiny DOM and fetch helpers.
const $ = (id) => document.getElementById(id);

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail ? JSON.stringify(body.detail) : response.statusText);
  return body;
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

async function copyText(text, note) {
  try { await navigator.clipboard.writeText(text); note.textContent = "copied"; }
  catch (error) { note.textContent = "select and copy the text above"; }
  setTimeout(() => { note.textContent = ""; }, 2000);
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}
