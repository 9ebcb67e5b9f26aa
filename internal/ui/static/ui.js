// stepfort dashboard: search as you type on the certificates page.
// Without this file every form still works (it submits as a GET).
(function () {
  'use strict';
  var form = document.getElementById('certsearch');
  var results = document.getElementById('results');
  if (!form || !results) { return; }
  var timer = null;
  var seq = 0;
  function refresh() {
    var params = new URLSearchParams(new FormData(form));
    var url = form.getAttribute('action') + '?' + params.toString();
    var mine = ++seq;
    params.set('partial', '1');
    fetch(form.getAttribute('action') + '?' + params.toString(), {
      credentials: 'same-origin', headers: { 'Accept': 'text/html' }, redirect: 'error'
    }).then(function (r) {
      if (!r.ok && r.status !== 400) { throw new Error('HTTP ' + r.status); }
      return r.text();
    }).then(function (html) {
      if (mine !== seq) { return; } // a newer search is on its way
      // The fragment is rendered by the server with html/template.
      results.innerHTML = html;
      history.replaceState(null, '', url);
    }).catch(function () {
      form.submit(); // fall back to a full page load (e.g. session ended)
    });
  }
  form.addEventListener('input', function () {
    clearTimeout(timer);
    timer = setTimeout(refresh, 200);
  });
  form.addEventListener('change', function () {
    clearTimeout(timer);
    timer = setTimeout(refresh, 0);
  });
})();
