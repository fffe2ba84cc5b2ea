// Assistant panel: request text + optional reference photo + "include a render of the design" (the server renders
// the current values from the 3D view's camera, sent with the request; the iso view where there is no 3D view); the answer streams in
// (POST /api/vlm with stream: true); proposals show as a reviewable, correctable table (proposals.js) and are
// applied through POST /api/proposals/<id>/apply, which makes an ordinary, undoable history entry.
import { api, postEventStream } from './api.js';
import { $, toast } from './dom.js';
import { ProposalTable } from './proposals.js';

const IMAGE_TYPES = ['image/png', 'image/jpeg', 'image/webp'];

export class AssistantPanel {
  constructor({ maxUploadMb, getContext, onApplied, onCommitError, statusBadge, preview = null, getCamera = () => null }) {
    this.getCamera = getCamera; // () => the view's camera (viewer-camera.js) or null: the server's iso view
    this.getContext = getContext; // () => {model, version, schema, values}
    this.onApplied = onApplied; // (state) => void
    this.onCommitError = onCommitError; // (err) => boolean (true: handled)
    this.statusBadge = statusBadge;
    // Photos travel base64-encoded inside the JSON body (4/3 larger), which must fit the server's upload limit.
    this.maxImageBytes = Math.floor((maxUploadMb * 1024 * 1024 * 3) / 4) - 64 * 1024;
    this.image = null; // {name, size, dataUrl}
    this.abort = null;
    this.response = null;

    $('image-limit').textContent = `PNG, JPEG or WebP, up to ${(this.maxImageBytes / (1024 * 1024)).toFixed(1)} MB`;
    $('vlm-form').addEventListener('submit', (e) => { e.preventDefault(); this.send(); });
    $('vlm-prompt').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); this.send(); }
    });
    $('vlm-cancel').addEventListener('click', () => { if (this.abort) this.abort.abort(); });
    $('vlm-image').addEventListener('change', (e) => { if (e.target.files[0]) this.attach(e.target.files[0]); e.target.value = ''; });
    $('image-remove').addEventListener('click', () => this.clearImage());
    const zone = $('drop-zone');
    zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
    zone.addEventListener('dragleave', () => zone.classList.remove('over'));
    zone.addEventListener('drop', (e) => {
      e.preventDefault();
      zone.classList.remove('over');
      const file = e.dataTransfer && e.dataTransfer.files[0];
      if (file) this.attach(file);
    });
    this.table = new ProposalTable({ getContext, onApplied, onCommitError, preview });
  }

  // Forget the answer on screen (its proposals belong to the model that was shown when it was asked).
  clear() {
    if (this.abort) this.abort.abort();
    this.response = null;
    $('vlm-answer').textContent = '';
    $('vlm-summary').textContent = '';
    this.table.hide();
    this.requestStatus('');
    this.showError('');
  }

  imageError(message) {
    const node = $('image-error');
    node.textContent = message;
    node.hidden = !message;
  }

  async attach(file) {
    this.imageError('');
    if (!IMAGE_TYPES.includes(file.type)) {
      this.imageError(`“${file.name}” is not a PNG, JPEG or WebP image.`);
      return;
    }
    if (file.size > this.maxImageBytes) {
      const mb = (file.size / (1024 * 1024)).toFixed(1);
      this.imageError(`“${file.name}” is ${mb} MB; the limit is ${(this.maxImageBytes / (1024 * 1024)).toFixed(1)} MB.`);
      return;
    }
    const dataUrl = await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
    this.image = { name: file.name, size: file.size, dataUrl };
    $('image-thumb').src = dataUrl;
    $('image-name').textContent = `${file.name} (${Math.ceil(file.size / 1024)} KB)`;
    $('image-preview').hidden = false;
  }

  clearImage() {
    this.image = null;
    $('image-thumb').removeAttribute('src');
    $('image-name').textContent = '';
    $('image-preview').hidden = true;
    this.imageError('');
  }

  setRunning(running) {
    $('vlm-send').disabled = running;
    $('vlm-cancel').hidden = !running;
    $('vlm-answer').dataset.state = running ? 'streaming' : 'idle';
  }

  async send() {
    if (this.abort) return;
    const prompt = $('vlm-prompt').value.trim();
    if (!prompt) {
      this.showError('Write a request first.');
      $('vlm-prompt').focus();
      return;
    }
    const ctx = this.getContext();
    const body = { prompt, stream: true, include_render: $('vlm-include-render').checked, model: ctx.model };
    if (this.image) body.images = [this.image.dataUrl];
    const camera = body.include_render ? this.getCamera() : null;
    if (camera) body.camera = camera;
    $('vlm-include-render').dataset.sent = body.include_render ? (camera ? 'camera' : 'iso') : 'none';

    this.showError('');
    const answer = $('vlm-answer');
    answer.textContent = '';
    $('vlm-summary').textContent = '';
    this.table.hide();
    this.response = null;
    this.abort = new AbortController();
    this.setRunning(true);
    this.statusBadge.setBusy(true);
    this.requestStatus('Sending…');
    let finished = false;
    try {
      for await (const { event, data } of postEventStream('/api/vlm', body, { signal: this.abort.signal })) {
        if (event === 'status') {
          this.statusBadge.showProgress(data.state, data.progress);
          this.requestStatus(data.state === 'loading' ? 'Loading the model…' : 'Thinking…');
        } else if (event === 'token') {
          if (answer.dataset.state !== 'streaming') answer.dataset.state = 'streaming';
          answer.textContent += data.text || '';
          this.requestStatus('Writing…');
          answer.scrollTop = answer.scrollHeight;
        } else if (event === 'done') {
          finished = true;
          this.showResponse(data);
        } else if (event === 'error') {
          finished = true;
          this.showError(data.message || 'the model failed to answer');
        }
      }
      if (!finished) this.showError('The answer stopped before it was complete; try again.');
    } catch (err) {
      if (err.name === 'AbortError') this.requestStatus('Stopped.');
      else this.showError(err.message);
    } finally {
      this.abort = null;
      this.setRunning(false);
      answer.dataset.state = finished && this.response ? 'done' : 'idle';
      this.statusBadge.setBusy(false);
    }
  }

  requestStatus(text) {
    $('vlm-request-status').textContent = text;
  }

  showError(message) {
    const node = $('vlm-error');
    node.textContent = message;
    node.hidden = !message;
    if (message) this.requestStatus('');
  }

  showResponse(response) {
    this.response = response;
    $('vlm-answer').textContent = response.text || '';
    $('vlm-summary').textContent = response.summary || '';
    const timings = response.timings || {};
    const seconds = timings.total_s ?? timings.total ?? timings.generate;
    const took = response.cached ? 'Answered from the cache.'
      : (typeof seconds === 'number' ? `Answered in ${seconds.toFixed(1)} s.` : 'Answered.');
    const proposed = (response.proposals || []).length;
    this.requestStatus(proposed ? took : `${took} No parameter changes proposed: you can add your own below.`);
    this.table.show(response);
  }
}
