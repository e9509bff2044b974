// The header pill (GET /pill), meant for an <iframe> in the app's own page: it follows
// GET /local/events and ticks its relative time every second. A click opens the full panel.
// It sends nothing to the page that frames it.

import { drawPill, followStatus, pillView } from './status.js';

const pill = document.getElementById('pill');
let status = null;
let reachable = true;

function draw() {
  const view = pillView(reachable ? status : null, Date.now());
  drawPill(pill, view);
  pill.setAttribute('aria-label', `Cloud sync: ${view.text}. Opens the Cloud Sync panel.`);
}

followStatus({
  onStatus(next) {
    status = next;
    draw();
  },
  onConnection(connected) {
    reachable = connected;
    draw();
  },
});
setInterval(draw, 1000);
