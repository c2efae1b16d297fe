// Renders the page's copy of docs/asyncapi.yaml with the AsyncAPI Initiative's React
// component (its standalone bundle, served from the site: no network needed).
(function () {
  var source = document.getElementById("asyncapi-document");
  var target = document.getElementById("asyncapi");
  if (!source || !target || !window.AsyncApiStandalone) {
    return;
  }
  window.AsyncApiStandalone.render(
    {
      schema: source.textContent,
      config: { show: { sidebar: false, errors: true } },
    },
    target
  );
})();
