/* The playground's streams: Stop, "New chat", Ctrl+Enter, and ending a stream that broke.
 * Tokens arrive as escaped HTML from the server (the SSE extension appends them); nothing here
 * inserts model output as HTML. No inline handlers: everything hangs off data attributes.
 */
(function () {
  "use strict";

  function transcript() {
    return document.getElementById("pg-transcript");
  }

  // The answer is over (done, stopped or broken): no reconnects, no Stop button.
  function finish(stream, note) {
    if (!stream.classList.contains("is-streaming")) return;
    stream.classList.remove("is-streaming");
    stream.removeAttribute("aria-busy");
    // The SSE extension reconnects from this attribute after an error; without it, it cannot.
    stream.removeAttribute("sse-connect");
    if (note) {
      var stats = stream.querySelector(".pg-stats");
      if (stats) stats.textContent = note;
    }
  }

  // Keep what arrived before Stop in the conversation, so the next turn sees it.
  function keepPartialAnswer(stream) {
    var text = stream.querySelector(".pg-text");
    var content = text ? text.textContent : "";
    if (!content) return;
    var input = document.createElement("input");
    input.type = "hidden";
    input.name = "msg";
    input.setAttribute("form", "pg-form");
    input.value = JSON.stringify({role: "assistant", lane: stream.getAttribute("data-lane"), content: content});
    stream.appendChild(input);
  }

  // Closing the EventSource ends the request; the server then cancels the upstream call.
  function stop(stream) {
    if (!stream.classList.contains("is-streaming")) return;
    stream.setAttribute("data-stopped", "");
    // The SSE extension closes an element's EventSource on this event (as when htmx removes it).
    htmx.trigger(stream, "htmx:beforeCleanupElement");
    keepPartialAnswer(stream);
    finish(stream, "Stopped.");
  }

  function scrollToEnd() {
    var box = transcript();
    if (!box) return;
    // Follow the answer only when the reader is already at the end.
    if (box.scrollHeight - box.scrollTop - box.clientHeight < 80) box.scrollTop = box.scrollHeight;
  }

  document.addEventListener("click", function (evt) {
    var target = evt.target;
    if (!(target instanceof Element)) return;
    var stopButton = target.closest("[data-pg-stop]");
    if (stopButton) {
      var stream = stopButton.closest("[data-pg-stream]");
      if (stream) stop(stream);
      return;
    }
    if (target.closest("[data-pg-clear]")) {
      var box = transcript();
      if (!box) return; // no playground here: follow the link
      evt.preventDefault();
      box.querySelectorAll("[data-pg-stream]").forEach(stop);
      box.querySelectorAll(".pg-turn").forEach(function (turn) { turn.remove(); });
      var message = document.getElementById("id_message");
      if (message) message.focus();
    }
  });

  document.addEventListener("htmx:sseClose", function (evt) {
    var stream = evt.target;
    if (stream instanceof Element && stream.matches("[data-pg-stream]")) {
      finish(stream, stream.hasAttribute("data-stopped") ? "Stopped." : "");
    }
  });

  // A stream that breaks (server gone, 404 for a spent token) is not retried: say so instead.
  document.addEventListener("htmx:sseError", function (evt) {
    var stream = evt.target;
    if (!(stream instanceof Element) || !stream.matches("[data-pg-stream]")) return;
    if (evt.detail && evt.detail.source) evt.detail.source.close();
    finish(stream, "The connection broke before the answer was complete.");
  });

  document.addEventListener("htmx:sseMessage", function (evt) {
    if (!(evt.target instanceof Element) || !evt.target.closest("#pg-transcript")) return;
    // The first token is in: the placeholder stops saying it is waiting for it.
    if (evt.target.matches(".pg-text")) {
      var stream = evt.target.closest("[data-pg-stream]");
      var waiting = stream && stream.querySelector("[data-pg-waiting]");
      if (waiting) {
        waiting.removeAttribute("data-pg-waiting");
        waiting.textContent = "Streaming…";
      }
    }
    scrollToEnd();
  });

  document.addEventListener("htmx:afterSwap", function (evt) {
    if (evt.target && evt.target.id === "pg-transcript") {
      var box = transcript();
      box.scrollTop = box.scrollHeight;
    }
  });

  // Ctrl+Enter (or Cmd+Enter) in the message box sends.
  document.addEventListener("keydown", function (evt) {
    var target = evt.target;
    if (evt.key !== "Enter" || !(evt.ctrlKey || evt.metaKey)) return;
    if (target instanceof HTMLTextAreaElement && target.form && target.form.id === "pg-form") {
      evt.preventDefault();
      target.form.requestSubmit();
    }
  });
})();
