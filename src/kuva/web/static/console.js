// kuva operator console: times in the operator's zone (UTC on hover), and the
// image view's window presets and frame paging with the keyboard. No build step.
"use strict";
document.querySelectorAll("time[datetime]").forEach(function (el) {
  var when = new Date(el.getAttribute("datetime"));
  if (!isNaN(when)) {
    el.title = el.getAttribute("datetime").replace("T", " ").replace("Z", " UTC");
    el.textContent = when.toLocaleString();
  }
});
(function () {
  var viewer = document.querySelector("[data-viewer]");
  if (!viewer) { return; }
  var img = viewer.querySelector("img");
  var base = viewer.getAttribute("data-base");
  var frames = parseInt(viewer.getAttribute("data-frames"), 10) || 1;
  var frame = 1;
  var windowParam = "";
  var label = viewer.querySelector("[data-frame-label]");
  function show() {
    img.src = base + "/frames/" + frame + "/rendered" + (windowParam ? "?window=" + windowParam : "");
    label.textContent = frame + " / " + frames;
  }
  viewer.querySelectorAll("[data-window]").forEach(function (button) {
    button.addEventListener("click", function () { windowParam = button.getAttribute("data-window"); show(); });
  });
  function page(step) { frame = Math.min(frames, Math.max(1, frame + step)); show(); }
  viewer.querySelector("[data-prev]").addEventListener("click", function () { page(-1); });
  viewer.querySelector("[data-next]").addEventListener("click", function () { page(1); });
  document.addEventListener("keydown", function (event) {
    if (event.target.tagName === "INPUT") { return; }
    if (event.key === "ArrowRight" || event.key === "PageDown") { page(1); }
    if (event.key === "ArrowLeft" || event.key === "PageUp") { page(-1); }
  });
  show();
})();
