// Drives the npm client openblox (unmodified) against a local lodestore Open Cloud server, for
// tests/storage/opencloud/test_openblox.py. Usage: node openblox_client.js BASE_URL API_KEY
// (NODE_PATH names the node_modules that holds openblox). openblox addresses https://apis.roblox.com/...; its
// `config.http.adapter` sends each request to BASE_URL instead and answers with the Roblox URL, so that openblox
// parses errors as Roblox's. Prints one JSON object: what each call answered.

const { createOpenbloxConfig, setDefaultOpenbloxConfig } = require("openblox/config");
const { HttpResponse } = require("openblox/http");
const { MemoryStoresApi, MessagingApi, StandardDataStoresApi_V1, StandardDataStoresApi_V2 } = require("openblox/cloud");

const [base, cloudKey] = process.argv.slice(2);
const ROBLOX = "https://apis.roblox.com/";

const toLocal = async ({ url, method, headers, body, formData }) => {
  const response = await fetch(base + url.slice(ROBLOX.length), { method, headers, body: formData || body });
  const json = (response.headers.get("content-type") || "").startsWith("application/json");
  return new HttpResponse({ url, method, success: response.ok, statusCode: response.status, headers: response.headers,
                            body: json ? await response.json() : await response.text(), fullResponse: response });
};

setDefaultOpenbloxConfig(createOpenbloxConfig({ cloudKey, http: { adapter: toLocal } }));

const statusOf = async (call) => {
  try {
    await call();
    return 200;
  } catch (error) {
    return error.response.statusCode;
  }
};

const main = async () => {
  const universeId = 1;
  const entry = { universeId, dataStore: "players", scope: "global" };
  const out = {};
  out.created = (await StandardDataStoresApi_V2.createStandardDataStoreEntry(
    { ...entry, entryId: "user_1", value: { coins: 5 }, users: [1] })).data;
  out.got = (await StandardDataStoresApi_V2.standardDataStoreEntry({ ...entry, entryId: "user_1" })).data;
  await StandardDataStoresApi_V2.createStandardDataStoreEntry({ ...entry, entryId: "user_2", value: { coins: 1 } });
  out.listed = (await StandardDataStoresApi_V2.listStandardDataStoreEntries({ ...entry })).data.map((e) => e.id);
  out.stores = (await StandardDataStoresApi_V1.listStandardDatastores({ universeId })).data.map((s) => s.name);
  out.storesV2 = (await StandardDataStoresApi_V2.listStandardDataStores({ universeId, prefix: "pl" })).data;
  out.snapshot = (await StandardDataStoresApi_V2.createStandardDataStoreSnapshot({ universeId })).data;
  const visits = { universeId, dataStore: "counters", scope: "global", entryId: "visits" };
  await StandardDataStoresApi_V2.incrementStandardDatastoreEntry({ ...visits, amount: 3 });
  out.incremented = (await StandardDataStoresApi_V2.incrementStandardDatastoreEntry({ ...visits, amount: 4 })).data;
  out.missingStatus = await statusOf(() => StandardDataStoresApi_V2.standardDataStoreEntry({ ...entry,
                                                                                             entryId: "nobody" }));
  const ranks = { universeId, sortedMap: "ranks" };
  await MemoryStoresApi.createSortedMapItem({ ...ranks, item: { id: "bob", value: "b", ttl: "300s",
                                                               numericSortKey: 20 } });
  out.item = (await MemoryStoresApi.createSortedMapItem({ ...ranks, item: { id: "ann", value: { n: 1 }, ttl: "300s",
                                                                          numericSortKey: 10 } })).data;
  out.gotItem = (await MemoryStoresApi.sortedMapItem({ ...ranks, itemId: "ann" })).data;
  out.items = (await MemoryStoresApi.listSortedMapItems({ ...ranks, maxPageSize: 10 })).data.map((i) => i.id);
  out.flushed = (await MemoryStoresApi.flushAllQueues({ universeId })).data;
  out.flushedItemStatus = await statusOf(() => MemoryStoresApi.sortedMapItem({ ...ranks, itemId: "ann" }));
  out.published = (await MessagingApi.publishMessage({ universeId, topic: "announcements", message: "hello" })).data;
  process.stdout.write(JSON.stringify(out));
};

main().catch((error) => {
  process.stderr.write(`${error?.response ? JSON.stringify(error.response.body) : ""} ${error?.stack || error}\n`);
  process.exit(1);
});
