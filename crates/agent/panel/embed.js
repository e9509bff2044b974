// Ferry's sync pill for an app's header, in one tag:
//
//   <script src="http://127.0.0.1:7301/pill.js" async></script>
//
// It puts a frame of the agent's pill page (/pill) where the tag is, or into the element the
// tag's data-target selector names (data-target="#sync-pill"). data-width sets the frame's
// width (default 16rem). The pill runs inside the frame, on the agent's own origin: this script
// reads nothing from the agent, and the page it runs in learns nothing of the status.
(function () {
  'use strict';
  var script = document.currentScript;
  if (!script) return;
  var agent = new URL(script.src);
  var frame = document.createElement('iframe');
  frame.src = new URL('/pill', agent).href;
  frame.title = 'Cloud sync status';
  frame.setAttribute('loading', 'eager');
  frame.setAttribute('referrerpolicy', 'no-referrer');
  frame.style.border = '0';
  frame.style.width = script.dataset.width || '16rem';
  frame.style.height = '2rem';
  frame.style.verticalAlign = 'middle';
  frame.style.overflow = 'hidden';
  frame.style.background = 'transparent';

  function place() {
    var target = script.dataset.target ? document.querySelector(script.dataset.target) : null;
    if (target) {
      target.appendChild(frame);
    } else if (script.parentNode) {
      script.parentNode.insertBefore(frame, script.nextSibling);
    }
  }

  if (script.dataset.target && document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', place);
  } else {
    place();
  }
})();
