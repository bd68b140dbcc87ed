// The test page: the official Clickstream web SDK, driven by tests/browser/driver.mjs.
import { inflightCount, requests } from './fetch-log.js';
import { ClickstreamAnalytics, SendMode } from '@aws/clickstream-web';

// StorageUtil.prefix + 'failedEventsKey' / 'eventsKey' in @aws/clickstream-web 0.12.6
// (src/util/StorageUtil.ts).
const STORAGE_PREFIX = 'aws-solution/clickstream-web/';
export const FAILED_EVENTS_KEY = STORAGE_PREFIX + 'failedEventsKey';
export const EVENTS_KEY = STORAGE_PREFIX + 'eventsKey';

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

// Links with absolute hrefs (the SDK records `_click` only for those): one to this site, one to
// another origin (outbound). Navigation is prevented so the page and its SDK state stay alive.
function prepareLinks() {
  document
    .getElementById('product-link')
    .setAttribute('href', `${location.origin}/products/p-1?ref=home`);
  // Another origin on the loopback address: never visited, the click is cancelled below.
  document.getElementById('partner-link').setAttribute('href', 'http://127.0.0.1:9/partner');
  document.addEventListener('click', event => {
    if (event.target instanceof Element && event.target.closest('a')) event.preventDefault();
  });
}

function start({ endpoint, mode, interval = 1000 }) {
  prepareLinks();
  const ok = ClickstreamAnalytics.init({
    appId: 'shop',
    endpoint,
    sendMode: mode === 'Batch' ? SendMode.Batch : SendMode.Immediate,
    sendEventsInterval: interval,
    isLogEvents: false,
    globalAttributes: { _traffic_source_source: 'e2e', _traffic_source_medium: 'test' },
  });
  if (!ok) throw new Error('ClickstreamAnalytics.init returned false');
}

function shop() {
  ClickstreamAnalytics.record({
    name: 'add_to_cart',
    attributes: { product_id: 'p-1', price: 9.99, in_stock: true, note: 'ünïcödé ✓' },
    items: [{ id: 'p-1', name: 'Mug', price: 9.99, quantity: 2, category: 'kitchen' }],
  });
  ClickstreamAnalytics.setUserId('user-42');
  ClickstreamAnalytics.setUserAttributes({ plan: 'gold', age: 30, newsletter: true });
  // A second page of the single-page app: the SDK hooks pushState and records `_page_view`.
  document.title = 'Shop - Cart';
  history.pushState({}, '', '/cart');
  ClickstreamAnalytics.record({
    name: 'begin_checkout',
    attributes: { cart_id: 'c-7', price: 19.98, currency: 'EUR' },
  });
}

// Waits until nothing is in flight and nothing is queued (Batch mode), and that stays so for
// `quietMs`: the SDK clears its queue only after its fetch resolved.
async function settle({ quietMs = 400, timeoutMs = 10000 } = {}) {
  const end = Date.now() + timeoutMs;
  let quietSince = null;
  while (Date.now() < end) {
    const idle =
      inflightCount() === 0 &&
      !localStorage.getItem(EVENTS_KEY) &&
      requests.length > 0 &&
      requests.every(r => r.ended_at !== null);
    if (idle) {
      quietSince ??= Date.now();
      if (Date.now() - quietSince >= quietMs) return true;
    } else {
      quietSince = null;
    }
    await sleep(50);
  }
  return false;
}

// Stop the SDK from sending anything more (the page-hide engagement events when the driver
// closes the page), so that the recorded requests are all the requests this page made.
function quiesce() {
  ClickstreamAnalytics.updateConfigure({
    isTrackUserEngagementEvents: false,
    isTrackAppEndEvents: false,
    isTrackClickEvents: false,
    isTrackScrollEvents: false,
    isTrackPageViewEvents: false,
  });
}

function snapshot() {
  return {
    requests: requests.map(r => ({ ...r })),
    inflight: inflightCount(),
    failed_events: localStorage.getItem(FAILED_EVENTS_KEY),
    queued_events: localStorage.getItem(EVENTS_KEY),
    storage_keys: Object.keys(localStorage).sort(),
    user_agent: navigator.userAgent,
    origin: location.origin,
  };
}

window.e2e = { start, shop, settle, quiesce, snapshot };
