/* Small progressive enhancements for the dashboard (htmx does the rest).
 * No inline handlers and no eval, so the pages work under a strict Content-Security-Policy.
 */
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  function flash(text, level) {
    var box = document.getElementById("messages");
    if (!box) return;
    var div = document.createElement("div");
    div.className = "flash flash-" + (level || "error");
    div.setAttribute("role", "alert");
    div.textContent = text; // text, never HTML: server and upstream text is untrusted
    var close = document.createElement("button");
    close.type = "button";
    close.className = "flash-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    div.appendChild(close);
    box.appendChild(div);
  }

  function closeModal() {
    var modal = document.getElementById("modal");
    if (modal) modal.replaceChildren();
  }

  // W8: htmx does not swap 4xx/5xx responses; say what happened instead of doing nothing.
  document.addEventListener("htmx:responseError", function (evt) {
    var xhr = evt.detail.xhr;
    var detail = "";
    try {
      var doc = new DOMParser().parseFromString(xhr.responseText || "", "text/html");
      var el = doc.querySelector("[data-error-message]");
      if (el) detail = el.textContent.trim();
    } catch (e) { /* not HTML */ }
    var reason = {403: "Not allowed", 404: "Not found", 405: "Not allowed", 500: "Server error"}[xhr.status] || "Request failed";
    flash(reason + " (HTTP " + xhr.status + ")" + (detail ? ": " + detail : "."), "error");
  });
  document.addEventListener("htmx:sendError", function () {
    flash("The server could not be reached. Check your connection and try again.", "error");
  });
  document.addEventListener("htmx:timeout", function () {
    flash("The server took too long to answer.", "error");
  });

  // Sent by the server (HX-Trigger) after an action confirmed in the modal.
  document.addEventListener("closeModal", closeModal);

  document.addEventListener("htmx:afterSwap", function (evt) {
    if (evt.target && evt.target.id === "modal") {
      var focus = evt.target.querySelector(".btn-danger, button, a");
      if (focus) focus.focus();
    }
  });

  document.addEventListener("click", function (evt) {
    var target = evt.target;
    if (!(target instanceof Element)) return;
    var closer = target.closest("[data-close-modal]");
    if (closer && closer.closest("#modal")) {
      evt.preventDefault();
      closeModal();
      return;
    }
    if (target.matches("[data-modal]")) { // a click on the backdrop
      closeModal();
      return;
    }
    if (target.closest(".flash-close")) {
      target.closest(".flash").remove();
      return;
    }
    var copy = target.closest("[data-copy]");
    if (copy) {
      var source = document.querySelector(copy.getAttribute("data-copy"));
      if (!source) return;
      var text = source.textContent.trim();
      var done = function () {
        copy.textContent = "Copied";
        setTimeout(function () { copy.textContent = "Copy"; }, 2000);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { selectText(source); });
      } else {
        selectText(source);
      }
    }
  });

  function selectText(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  document.addEventListener("keydown", function (evt) {
    if (evt.key === "Escape") closeModal();
  });

  // The org switcher submits itself when a new org is picked.
  document.addEventListener("change", function (evt) {
    var target = evt.target;
    if (target instanceof HTMLSelectElement && target.hasAttribute("data-autosubmit") && target.form) {
      target.form.requestSubmit();
    }
  });
})();
