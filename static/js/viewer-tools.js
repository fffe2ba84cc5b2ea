// The viewer's CAD tools (part tree, measure, edges and section, keyboard orbit, projection and axes triad),
// installed on the three.js Viewer. The no-WebGL fallback (a server render of four views) has no scene to work
// on: their controls, and the views the server does not render, are hidden there.
import { PartTree } from './viewer-parts.js';
import { MeasureTool } from './viewer-measure.js';
import { SectionTool } from './viewer-section.js';
import { bindKeyboardOrbit } from './viewer-keys.js';
import { AxesTriad } from './viewer-triad.js';
import { $ } from './dom.js';

export function installViewerTools(viewer) {
  if (!viewer.events) {
    for (const node of document.querySelectorAll('.viewer-tools')) node.hidden = true;
    return null;
  }
  bindKeyboardOrbit(viewer);
  const triad = new AxesTriad(viewer);
  $('toggle-axes').addEventListener('change', (e) => triad.show(e.target.checked));
  $('toggle-ortho').addEventListener('change', (e) => viewer.setProjection(e.target.checked));
  viewer.container.dataset.projection = 'perspective';
  return { parts: new PartTree(viewer), measure: new MeasureTool(viewer), section: new SectionTool(viewer), triad };
}
