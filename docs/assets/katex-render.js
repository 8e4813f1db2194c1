// Typesets the maths that pymdownx.arithmatex (generic mode) leaves in the pages, with the KaTeX
// bundled next to this file (docs/assets/katex/), so the site needs no network: inline maths
// is <span class="arithmatex">\(...\)</span>, display maths <div class="arithmatex">\[...\]</div>.
(function () {
  function render(root) {
    root.querySelectorAll(".arithmatex").forEach(function (element) {
      var tex = element.textContent.trim().replace(/^\\[([]/, "").replace(/\\[)\]]$/, "");
      katex.render(tex, element, {
        displayMode: element.tagName === "DIV",
        throwOnError: false,
      });
    });
  }
  if (window.document$) {
    window.document$.subscribe(function () { render(document); }); // Material's page loads
  } else {
    render(document);
  }
})();
