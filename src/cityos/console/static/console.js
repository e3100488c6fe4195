// Localises numbers and dates in the page's language (Intl), on load and after each htmx swap.
(function () {
  "use strict";
  const locale = document.body.dataset.locale || "en";
  const numbers = new Intl.NumberFormat(locale, { maximumFractionDigits: 2 });
  const dates = new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "short" });
  function localise(root) {
    root.querySelectorAll("data.num").forEach(function (el) {
      const n = Number(el.getAttribute("value"));
      if (!Number.isNaN(n)) el.textContent = numbers.format(n);
    });
    root.querySelectorAll("time.when").forEach(function (el) {
      const d = new Date(el.getAttribute("datetime"));
      if (!Number.isNaN(d.getTime())) el.textContent = dates.format(d);
    });
  }
  window.cityos = { locale: locale, numbers: numbers, dates: dates, localise: localise };
  document.addEventListener("DOMContentLoaded", function () { localise(document); });
  document.addEventListener("htmx:afterSwap", function (e) { localise(e.target.parentNode || document); });
})();
