// The viewer's CAD tools (part tree, measure, edges and section, keyboard orbit), installed on the three.js
// Viewer. The no-WebGL fallback (a server render) has no scene to work on: their controls are hidden there.
import { PartTree } from './viewer-parts.js';
import { MeasureTool } from './viewer-measure.js';
import { SectionTool } from './viewer-section.js';
import { bindKeyboardOrbit } from './viewer-keys.js';

export function installViewerTools(viewer) {
  if (!viewer.events) {
    for (const node of document.querySelectorAll('.viewer-tools')) node.hidden = true;
    return null;
  }
  bindKeyboardOrbit(viewer);
  return { parts: new PartTree(viewer), measure: new MeasureTool(viewer), section: new SectionTool(viewer) };
}
