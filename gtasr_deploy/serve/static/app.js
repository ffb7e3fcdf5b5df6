// Upload one photo, show progress, compare the x4 result with bicubic, offer the download.
"use strict";
const $ = (id) => document.getElementById(id);
let objectUrls = [];

function setProgress(text, percent) {
  const bar = $("progress");
  bar.hidden = false;
  if (percent === null) bar.removeAttribute("value"); // indeterminate while the server works
  else bar.value = percent;
  $("status").textContent = text;
}

// The server's name for the result, from Content-Disposition (RFC 6266): filename* (RFC 5987,
// UTF-8, any script) when present, else the ASCII filename; null when neither is there.
function downloadName(xhr) {
  const header = xhr.getResponseHeader("Content-Disposition") || "";
  const extended = /filename\*=UTF-8''([^;\s]+)/i.exec(header);
  if (extended) {
    try { return decodeURIComponent(extended[1]); } catch (_) { /* malformed: use the fallback */ }
  }
  const plain = /filename="([^"]*)"/i.exec(header);
  return plain ? plain[1] : null;
}

function post(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${path}?name=${encodeURIComponent(file.name)}&format=png`);
    xhr.responseType = "blob";
    if (onProgress) {
      xhr.upload.onprogress = (e) => e.lengthComputable && onProgress("upload", e.loaded / e.total);
      xhr.upload.onload = () => onProgress("work", null);
      xhr.onprogress = (e) => e.lengthComputable && onProgress("download", e.loaded / e.total);
    }
    xhr.onload = async () => {
      if (xhr.status === 200) return resolve({ blob: xhr.response, name: downloadName(xhr) });
      let message = `HTTP ${xhr.status}`;
      try { message = JSON.parse(await xhr.response.text()).error || message; } catch (_) { /* not JSON */ }
      reject(new Error(message));
    };
    xhr.onerror = () => reject(new Error("network error: is the service still running?"));
    xhr.send(file);
  });
}

function showImage(img, blob) {
  const url = URL.createObjectURL(blob);
  objectUrls.push(url);
  return new Promise((resolve, reject) => {
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser could not display the result"));
    img.src = url;
  });
}

async function upscale(file) {
  objectUrls.forEach(URL.revokeObjectURL);
  objectUrls = [];
  $("error").hidden = true;
  $("result-box").hidden = true;
  const started = performance.now();
  const phases = { upload: [0, 40, "Uploading"], work: [40, null, "Upscaling ×4"], download: [90, 10, "Receiving"] };
  try {
    const [sr, before] = await Promise.all([
      post("/v1/upscale", file, (phase, fraction) => {
        const [base, span, label] = phases[phase];
        setProgress(`${label}…`, span === null ? null : Math.round(base + span * fraction));
      }),
      post("/v1/bicubic", file, null),
    ]);
    await Promise.all([showImage($("result"), sr.blob), showImage($("before"), before.blob)]);
    const img = $("result");
    $("compare").style.setProperty("--shown-width", `${img.naturalWidth}px`);
    const link = $("download");
    link.href = img.src;
    link.download = sr.name || `${file.name.replace(/\.[^.]*$/, "")}_x4.png`;
    $("sizes").textContent = `${img.naturalWidth / 4}×${img.naturalHeight / 4} → ${img.naturalWidth}×${img.naturalHeight}`;
    $("result-box").hidden = false;
    setProgress(`Done in ${((performance.now() - started) / 1000).toFixed(1)} s`, 100);
    document.body.dataset.state = "done";
  } catch (err) {
    $("progress").hidden = true;
    $("status").textContent = "";
    $("error").textContent = err.message;
    $("error").hidden = false;
    document.body.dataset.state = "error";
  }
}

$("file").addEventListener("change", (e) => e.target.files[0] && upscale(e.target.files[0]));
$("slider").addEventListener("input", (e) => $("compare").style.setProperty("--split", `${e.target.value}%`));
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer.files[0]) upscale(e.dataTransfer.files[0]);
});

// Name the weights this service runs, and link what is known about them (the demo weights' model card).
fetch("/health").then((r) => r.json()).then((health) => {
  $("weights-name").textContent = health.weights || "unknown";
  if (health.model_card) {
    $("model-card").href = health.model_card;
    $("model-card").hidden = false;
  }
}).catch(() => { $("weights-name").textContent = "unknown (the service did not answer /health)"; });
