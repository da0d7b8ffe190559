// The live deal page: draw the per-minute chart from the figures htmx swaps in every 2 s.
(function () {
  "use strict";
  function draw() {
    var box = document.getElementById("chart");
    if (!box || typeof uPlot === "undefined") return;
    var data = JSON.parse(box.getAttribute("data-chart"));
    box.textContent = "";
    if (!data.minutes.length) return;
    var width = Math.min(box.parentElement.clientWidth || 600, 900);
    new uPlot({
      width: width, height: 240,
      series: [
        {},
        { label: "Issued", stroke: "#0a6b2d", width: 2 },
        { label: "Refused", stroke: "#a4161a", width: 2 },
        { label: "Stock left", stroke: "#0b4fa8", width: 2, scale: "stock" }
      ],
      axes: [{}, { label: "claims / min" }, { side: 1, scale: "stock", label: "stock left", grid: { show: false } }]
    }, [data.minutes, data.issued, data.refused, data.stock_left], box);
  }
  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSwap", draw);
})();
