/* potluck report: draws the job embedded in this file (no network; see dashboard/report.py). */
"use strict";
(function () {
  const {h, fmt, views} = window.potluck;
  const data = JSON.parse(document.getElementById("potluck-data").textContent);
  const job = data.job;
  const order = Object.keys(job.series.node_share);
  function draw() {
    views.renderJob(document.getElementById("report-job"), job, {order});
    views.renderStragglers(document.getElementById("report-stragglers"), job);
  }
  const meta = document.getElementById("report-meta");
  meta.append(`Report written ${fmt.date(data.meta.generated)} by potluck report.`);
  if (data.meta.csv) meta.append(" Step data: ", h("a", {href: data.meta.csv, text: data.meta.csv}), ".");
  draw();
  let timer = null;
  window.addEventListener("resize", () => { clearTimeout(timer); timer = setTimeout(draw, 150); });
})();
