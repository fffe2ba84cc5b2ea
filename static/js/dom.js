// Tiny DOM helpers. Every piece of text goes in through textContent: nothing from the server or a model
// is ever parsed as HTML.

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'text') node.textContent = String(value);
    else if (key === 'className') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== 'string') node[key] = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function formatNumber(value, step) {
  if (typeof value === 'boolean') return value ? 'on' : 'off';
  if (typeof value !== 'number' || !Number.isFinite(value)) return String(value);
  const decimals = step && step < 1 ? Math.min(4, Math.ceil(-Math.log10(step) - 1e-9)) : 0;
  const rounded = Number(value.toFixed(Math.max(decimals, Number.isInteger(value) ? 0 : 2)));
  return String(rounded);
}

export function formatBytes(bytes) {
  if (typeof bytes !== 'number' || !Number.isFinite(bytes) || bytes <= 0) return '';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  let v = bytes;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(v >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function formatDuration(seconds) {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds < 0) return '';
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds % 60);
  return `${m}:${String(s).padStart(2, '0')} min`;
}

export function formatTime(timestamp) {
  if (typeof timestamp !== 'number') return '';
  return new Date(timestamp * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

let toastTimer = null;
export function toast(message, kind = 'info') {
  const node = $('toast');
  node.textContent = message;
  node.dataset.kind = kind;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.hidden = true; }, kind === 'error' ? 6000 : 3000);
}

// A persistent banner for problems that need a decision (e.g. a version conflict).
export function showBanner(message, { onReload = null, kind = 'warning' } = {}) {
  const banner = $('banner');
  $('banner-text').textContent = message;
  banner.dataset.kind = kind;
  const reload = $('banner-reload');
  reload.hidden = !onReload;
  reload.onclick = onReload ? async () => { hideBanner(); await onReload(); } : null;
  delete banner.dataset.network;
  banner.hidden = false;
}

export function hideBanner() {
  $('banner').hidden = true;
  delete $('banner').dataset.network;
}

export function isTypingTarget(target) {
  if (!target || !(target instanceof Element)) return false;
  if (target.isContentEditable) return true;
  if (target.tagName === 'TEXTAREA' || target.tagName === 'SELECT') return true;
  if (target.tagName === 'INPUT') {
    const type = (target.getAttribute('type') || 'text').toLowerCase();
    return !['checkbox', 'radio', 'button', 'submit', 'reset', 'range', 'file'].includes(type);
  }
  return false;
}
