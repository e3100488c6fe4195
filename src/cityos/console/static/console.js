// Localises numbers and dates in the page's language (Intl), on load and after each htmx swap:
// <data class="num" value="n">, <time class="when" datetime="..."> (a date-time, in the browser's
// time zone) and <time class="day" datetime="YYYY-MM-DD"> (a date alone, never shifted by a zone).
(function () {
  "use strict";
  const locale = document.body.dataset.locale || "en";
  const numbers = new Intl.NumberFormat(locale, { maximumFractionDigits: 2 });
  const dates = new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "short" });
  const days = new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeZone: "UTC" });
  const DATE_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$/;
  const DATE = /^\d{4}-\d{2}-\d{2}$/;
  function format(el, formatter) {
    const d = new Date(el.getAttribute("datetime"));
    if (!Number.isNaN(d.getTime())) el.textContent = formatter.format(d);
  }
  function localise(root) {
    root.querySelectorAll("data.num").forEach(function (el) {
      const n = Number(el.getAttribute("value"));
      if (!Number.isNaN(n)) el.textContent = numbers.format(n);
    });
    root.querySelectorAll("time.when").forEach(function (el) { format(el, dates); });
    root.querySelectorAll("time.day").forEach(function (el) { format(el, days); });
  }
  // a value as a page shows it: a number or an ISO 8601 date(-time) in the page's language
  function shown(v) {
    if (typeof v === "number") return numbers.format(v);
    const text = String(v);
    const d = DATE_TIME.test(text) || DATE.test(text) ? new Date(text) : null;
    if (!d || Number.isNaN(d.getTime())) return text;
    return (DATE.test(text) ? days : dates).format(d);
  }
  window.cityos = { locale: locale, numbers: numbers, dates: dates, localise: localise, shown: shown };
  document.addEventListener("DOMContentLoaded", function () { localise(document); });
  document.addEventListener("htmx:afterSwap", function (e) { localise(e.target.parentNode || document); });
})();
