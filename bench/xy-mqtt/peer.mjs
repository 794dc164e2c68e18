#!/usr/bin/env node
// A benchmark peer built to the design of the JavaScript library, xy-mqtt 1.4 (it is not on npm, so this
// is a re-creation from its README and its published figures, not its code):
//   - mqtt.js (npm `mqtt`) with its defaults as xy-mqtt used them: MQTT 3.1.1, clean: false, a stable
//     client id, QoS 2 for every publish and subscribe, JSON payloads.
//   - xy-mqtt's packet store: better-sqlite3, journal_mode=WAL, synchronous=EXTRA, the README's two tables
//     (mqtt_incoming_packet / mqtt_outgoing_packet: id text, at timestamp, packet text) and its
//     put/get/del/all statements keyed by the packet's message id, called synchronously. It is handed
//     to mqtt.js as incomingStore/outgoingStore (put/get/del/createStream/close), so every QoS 2 step
//     that mqtt.js stores is one synced SQLite commit, as in xy-mqtt.
//   - subscribe(topic, fn): the payload is parsed as JSON; fn runs before the broker is acknowledged
//     (mqtt.js handleMessage: PUBCOMP only after fn succeeded); a throwing fn is retried with exponential
//     backoff capped at 12.8 s; a payload that does not parse is consumed and reported.
//   - Commands: <cmd>/invoke {messageId, ...}, <cmd>/resolve {messageId, ...}, <cmd>/reject {...}.
//
// Modes (flags are "--name value"), each prints `ready` once its subscriptions are granted (sub, serve)
// and a last line `RESULT {json}` with the keys bench/xybench prints for the same role:
//   sub   --broker U --topic T --count N                         (keys of xy-sub)
//   pub   --broker U --topic T --count N --size B [--outstanding K]   (keys of xy-pub; K 0 = all at once)
//   serve --broker U --command C                                 (runs until SIGTERM/SIGINT; keys of serve)
//   call  --broker U --command C --count N [--outstanding K] [--warmup W]   (keys of call)
// Common: --id ID (stable client id; default seed-<mode>-<pid>), --dir D (store directory; default a
// temporary one, removed at exit), --synchronous EXTRA|FULL|NORMAL|OFF (default EXTRA, xy-mqtt's),
// --nodelay 0|1 (default 1: TCP_NODELAY on the socket), --timeout S (default 600).
//
// Event payloads are JSON, as xy-mqtt publishes them: {"n":i,"t":<send time, ms since the epoch>,"pad":"x.."}
// padded to --size bytes (at least the JSON needs).
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { Readable } from 'node:stream'
import Database from 'better-sqlite3'
import mqtt from 'mqtt'

const say = line => process.stdout.write(line + '\n')
const fail = msg => {
  process.stderr.write(`seed-peer: ${msg}\n`)
  process.exit(1)
}
const wallMs = () => performance.timeOrigin + performance.now() // comparable between processes
const monoMs = () => performance.now()

function parseArgs(argv) {
  const [mode, ...rest] = argv
  const o = { mode }
  for (let i = 0; i < rest.length; i++) {
    if (!rest[i].startsWith('--')) fail(`unexpected argument ${rest[i]}`)
    const k = rest[i].slice(2)
    if (i + 1 < rest.length && !rest[i + 1].startsWith('--')) o[k] = rest[++i]
    else o[k] = '1'
  }
  return o
}

// Same as bench/common.h percentile(): linear interpolation between closest ranks.
function percentile(v, p) {
  if (!v.length) return 0
  v.sort((a, b) => a - b)
  const rank = (p / 100) * (v.length - 1)
  const lo = Math.floor(rank)
  const hi = Math.min(lo + 1, v.length - 1)
  return v[lo] + (v[hi] - v[lo]) * (rank - lo)
}

function result(fields) {
  say('RESULT ' + JSON.stringify(fields))
}

// ---------------------------------------------------------------------------------------------------
// xy-mqtt's SQLite store (README "Setup xy-mqtt with SQLite"), statements cached as its extend_sl does.

function openSeedDb(file, synchronous) {
  const sl = new Database(file)
  const cache = new Map()
  const stmt = sql => {
    if (!cache.has(sql)) cache.set(sql, sl.prepare(sql))
    return cache.get(sql)
  }
  sl.run = (sql, ...args) => stmt(sql).run(...args)
  sl.get1 = (sql, ...args) => stmt(sql).get(...args)
  sl.all1 = (sql, ...args) => stmt(sql).all(...args)
  sl.pragma('journal_mode = WAL')
  sl.pragma(`synchronous = ${synchronous}`)
  sl.exec(`
create table if not exists mqtt_incoming_packet (
  id text,
  at timestamp default current_timestamp,
  packet text
);
create table if not exists mqtt_outgoing_packet (
  id text,
  at timestamp default current_timestamp,
  packet text
);
`)
  return sl
}

// xy-mqtt's put/get/del/all for one table, verbatim in what they do.
function seedTable(sl, table) {
  return {
    put: packet =>
      sl.run(`insert into ${table} (id, packet) values (@id, @packet)`, {
        id: String(packet.messageId),
        packet: JSON.stringify(packet)
      }),
    get: packet => sl.get1(`select packet from ${table} where id = @id`, { id: String(packet.messageId) }),
    del: packet => sl.run(`delete from ${table} where id = @id`, { id: String(packet.messageId) }),
    all: () => sl.all1(`select packet from ${table} order by at asc`).map(row => revive(row.packet))
  }
}

// JSON.stringify turns a Buffer into {type:'Buffer', data:[...]}: turn it back so mqtt.js gets a packet.
function revive(text) {
  return JSON.parse(text, (k, v) =>
    v && typeof v === 'object' && v.type === 'Buffer' && Array.isArray(v.data) ? Buffer.from(v.data) : v
  )
}

// mqtt.js's Store interface over xy-mqtt's synchronous put/get/del/all.
class SeedStore {
  constructor(db) {
    this.db = db
  }
  put(packet, cb) {
    this.db.put(packet)
    if (cb) cb()
    return this
  }
  get(packet, cb) {
    const row = this.db.get(packet)
    if (row) cb(null, revive(row.packet))
    else if (cb) cb(new Error('missing packet'))
    return this
  }
  del(packet, cb) {
    const row = this.db.get(packet)
    if (row) {
      this.db.del(packet)
      if (cb) cb(null, revive(row.packet))
    } else if (cb) cb(new Error('missing packet'))
    return this
  }
  createStream() {
    return Readable.from(this.db.all(), { objectMode: true })
  }
  close(cb) {
    if (cb) cb()
  }
}

// ---------------------------------------------------------------------------------------------------
// xy-mqtt's client, reduced to what the benchmark uses.

class SeedClient {
  constructor(o) {
    this.handlers = new Map()
    this.ownDir = !o.dir
    this.dir = o.dir || fs.mkdtempSync(path.join(os.tmpdir(), 'seed-peer.'))
    fs.mkdirSync(this.dir, { recursive: true })
    this.sl = openSeedDb(path.join(this.dir, 'seed.db'), (o.synchronous || 'EXTRA').toUpperCase())
    this.client = mqtt.connect(o.broker.replace(/^tcp:/, 'mqtt:'), {
      clientId: o.id,
      clean: false,
      protocolVersion: 4,
      reconnectPeriod: 100,
      incomingStore: new SeedStore(seedTable(this.sl, 'mqtt_incoming_packet')),
      outgoingStore: new SeedStore(seedTable(this.sl, 'mqtt_outgoing_packet'))
    })
    // The broker is acknowledged (PUBCOMP) only once the handler succeeded, as xy-mqtt promises.
    this.client.handleMessage = (packet, done) => {
      this.onMessage(packet.topic, packet.payload).then(() => done(), done)
    }
    // TCP_NODELAY, as xy-mqtt's measured setup had (its recorded setup used mqtt.js with no-delay). mqtt.js 5.16
    // itself does not (lib/connect/tcp.js: net.createConnection without noDelay): set it on every
    // connection, after CONNACK. --nodelay 0 leaves the socket as mqtt.js opens it.
    if (o.nodelay !== '0') this.client.on('connect', () => this.client.stream?.setNoDelay?.(true))
    this.ending = false
    this.client.on('error', e => {
      if (!this.ending) process.stderr.write(`seed-peer: mqtt error: ${e.message}\n`)
    })
  }

  connected() {
    if (this.client.connected) return Promise.resolve()
    return new Promise(resolve => this.client.once('connect', () => resolve()))
  }

  publish(topic, payload) {
    return this.client.publishAsync(topic, JSON.stringify(payload), { qos: 2 })
  }

  async subscribe(topic, fn) {
    this.handlers.set(topic, fn)
    const granted = await this.client.subscribeAsync(topic, { qos: 2 })
    for (const g of granted) if (g.qos !== 2) throw new Error(`subscription ${g.topic} granted QoS ${g.qos}`)
  }

  async onMessage(topic, buf) {
    const fn = this.handlers.get(topic)
    if (!fn) return
    let payload
    try {
      payload = JSON.parse(buf.toString('utf8'))
    } catch (e) {
      process.stderr.write(`seed-peer: parse error on ${topic}: ${e.message}\n`)
      return
    }
    for (let delay = 100; ; delay = Math.min(delay * 2, 12800)) {
      try {
        await fn(payload, topic)
        return
      } catch (e) {
        process.stderr.write(`seed-peer: handler of ${topic} failed (${e && e.message}), retrying\n`)
        await new Promise(r => setTimeout(r, delay))
      }
    }
  }

  async end() {
    this.ending = true
    await new Promise(r => setTimeout(r, 20)) // let the last acknowledgement go out
    await this.client.endAsync()
    this.sl.close()
    if (this.ownDir) fs.rmSync(this.dir, { recursive: true, force: true })
  }
}

// ---------------------------------------------------------------------------------------------------
// modes

function eventPayload(n, size) {
  const t = wallMs()
  const base = JSON.stringify({ n, t, pad: '' })
  return { n, t, pad: 'x'.repeat(Math.max(0, size - base.length)) }
}

async function sub(c, o) {
  const expect = Number(o.count || 1000)
  const seen = new Uint8Array(expect)
  const lat = []
  let received = 0
  let dups = 0
  let firstSent = 0
  let lastRecv = 0
  let finish
  const finished = new Promise(r => (finish = r))
  await c.subscribe(o.topic, ({ n, t }) => {
    const now = wallMs()
    if (n < expect && seen[n]) {
      dups++
      return
    }
    if (n < expect) seen[n] = 1
    if (received === 0 || t < firstSent) firstSent = t
    lastRecv = now
    lat.push(now - t)
    if (++received >= expect) finish()
  })
  say('ready')
  const timeout = Number(o.timeout || 600) * 1000
  const all = await Promise.race([finished.then(() => true), new Promise(r => setTimeout(() => r(false), timeout).unref())])
  const secs = (lastRecv - firstSent) / 1000
  result({
    mode: 'seed-sub',
    complete: all ? 1 : 0,
    received,
    duplicates: dups,
    elapsed_s: secs,
    msgs_per_s: secs > 0 ? received / secs : 0,
    lat_p50_ms: percentile(lat, 50),
    lat_p99_ms: percentile(lat, 99)
  })
  return all
}

async function pub(c, o) {
  const count = Number(o.count || 1000)
  const size = Number(o.size || 100)
  const outstanding = Number(o.outstanding || 0) || count
  const t0 = monoMs()
  let t1 = t0
  let failures = 0
  let inflight = 0
  let wake = null
  const pending = []
  for (let i = 0; i < count; i++) {
    while (inflight >= outstanding) await new Promise(r => (wake = r))
    inflight++
    pending.push(
      c.publish(o.topic, eventPayload(i, size)).then(
        () => {},
        e => {
          failures++
          process.stderr.write(`seed-peer: publish ${i} failed: ${e.message}\n`)
        }
      ).finally(() => {
        inflight--
        if (wake) {
          const w = wake
          wake = null
          w()
        }
      })
    )
  }
  t1 = monoMs()
  await Promise.all(pending)
  const t2 = monoMs()
  result({
    mode: 'seed-pub',
    complete: failures ? 0 : 1,
    count,
    failures,
    enqueue_s: (t1 - t0) / 1000,
    drain_s: (t2 - t0) / 1000,
    pub_msgs_per_s: count / ((t2 - t0) / 1000)
  })
  return !failures
}

async function serve(c, o) {
  const command = o.command || 'bench/cmd/ping'
  let served = 0
  await c.subscribe(`${command}/invoke`, async ({ messageId }) => {
    served++
    // The handler returns {pong: true} and the result is published. Not awaited: mqtt.js handles incoming
    // packets one at a time and the invoke's PUBCOMP waits for this handler, so waiting here for the
    // result's own QoS 2 flow would deadlock. The result is already in the outgoing store (put is
    // synchronous) when the handler returns, so the invoke is still acknowledged only after that commit.
    c.publish(`${command}/resolve`, { pong: true, messageId }).catch(e =>
      process.stderr.write(`seed-peer: resolve ${messageId} failed: ${e.message}\n`)
    )
  })
  await c.subscribe(`${command}/cancel`, () => {})
  say('ready')
  await new Promise(resolve => {
    process.once('SIGTERM', resolve)
    process.once('SIGINT', resolve)
  })
  result({ mode: 'seed-serve', served })
  return true
}

async function call(c, o) {
  const command = o.command || 'bench/cmd/ping'
  const count = Number(o.count || 1000)
  const warmup = Number(o.warmup || 50)
  const outstanding = Math.max(1, Number(o.outstanding || 1))
  const waiting = new Map() // messageId -> resolve(ok)
  const onResult = ok => ({ messageId }) => {
    const w = waiting.get(messageId)
    if (!w) return // unknown ids are ignored (the protocol)
    waiting.delete(messageId)
    w(ok)
  }
  await c.subscribe(`${command}/resolve`, onResult(true))
  await c.subscribe(`${command}/reject`, onResult(false))
  const callOnce = () => {
    const messageId = randomUUID()
    const done = new Promise(r => waiting.set(messageId, r))
    c.publish(`${command}/invoke`, { messageId, n: 1 }).catch(e => fail(`invoke: ${e.message}`))
    return done
  }
  for (let i = 0; i < warmup; i++) await callOnce()
  const lat = []
  let rejected = 0
  const t0 = monoMs()
  let issued = 0
  await new Promise(resolve => {
    let active = 0
    const pump = () => {
      while (issued < count && active < outstanding) {
        issued++
        active++
        const t = monoMs()
        callOnce().then(ok => {
          lat.push(monoMs() - t)
          if (!ok) rejected++
          active--
          if (issued >= count && active === 0) resolve()
          else pump()
        })
      }
    }
    if (count === 0) resolve()
    else pump()
  })
  const secs = (monoMs() - t0) / 1000
  const sorted = lat.slice()
  result({
    mode: 'seed-call',
    outstanding,
    count,
    rejected,
    elapsed_s: secs,
    calls_per_s: count / secs,
    p50_ms: percentile(sorted, 50),
    p90_ms: percentile(sorted, 90),
    p99_ms: percentile(sorted, 99),
    max_ms: sorted.length ? sorted[sorted.length - 1] : 0
  })
  return true
}

async function main() {
  const o = parseArgs(process.argv.slice(2))
  const modes = { pub, sub, serve, call }
  if (!modes[o.mode]) fail(`unknown mode ${o.mode} (pub, sub, serve, call)`)
  if (!o.broker) fail('--broker is required')
  if ((o.mode === 'pub' || o.mode === 'sub') && !o.topic) fail('--topic is required')
  o.id = o.id || `seed-${o.mode}-${process.pid}`
  if (o.mode !== 'serve') {
    const limit = (Number(o.timeout || 600) + 60) * 1000
    setTimeout(() => fail(`timed out after ${limit} ms`), limit).unref()
  }
  const c = new SeedClient(o)
  await c.connected()
  const ok = await modes[o.mode](c, o)
  await c.end()
  process.exit(ok ? 0 : 3)
}

main().catch(e => fail(e && e.stack ? e.stack : String(e)))
