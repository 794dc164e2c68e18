#!/usr/bin/env node
// A small JavaScript peer that speaks the xy-mqtt protocol (xy-mqtt 1.4) with mqtt.js, for
// xymqtt's interop tests. It does what xy-mqtt does on the wire and nothing more:
//   - mqtt.js defaults as xy-mqtt used them: MQTT 3.1.1 (protocolVersion 4), clean: false, a stable
//     client id, QoS 2 for every publish and subscribe; payloads are JSON text without MQTT 5 properties.
//   - <cmd>/invoke  {messageId, ...request}          caller -> server
//   - <cmd>/resolve {messageId, ...result}           server -> caller
//   - <cmd>/reject  {messageId, ok:false, status:500, message}   (a thrown object with ok:false is
//                   published as-is, with messageId merged in)
//   - <cmd>/cancel  {messageId}  -> the handler's onCancel runs; no resolve/reject is published afterwards.
//
// Modes (every option is "--name value"; --broker accepts tcp://host:port or mqtt://host:port):
//   serve     --broker U --id ID --command C [--delay-ms N]
//             Answers calls. The request's "do" field picks the outcome:
//               (none)             resolve {echo: request.n, from: "js"} after --delay-ms
//               "throw"            throw new Error("js failure <n>")        -> reject status 500
//               "reject-object"    throw {ok:false, status:409, message:"js conflict", detail:{n}}
//               "reject-plain"     throw {ok:false, message:"random failure"}  (xy-mqtt's README's example)
//               "wait-cancel"      onCancel prints "cancelled"; waits for the cancel, then returns a
//                                  result that must never be published
//   call      --broker U --id ID --command C (--requests JSON-ARRAY | --count N [--request JSON-OBJECT])
//             [--cancel-on TOPIC]
//             Subscribes <C>/resolve and <C>/reject, calls once per request ("n" = index unless given),
//             prints each result and exits 0 once every call not cancelled has one. With --cancel-on it
//             also subscribes TOPIC: a message {messageId} there makes it cancel that call.
//   publish   --broker U --id ID --topic T --count N      publishes {n, from:"js", text} events
//   subscribe --broker U --id ID --topic T --count N      prints N received events, then exits
// Common: [--mqtt-version 4|5] (default 4, xy-mqtt's), [--timeout-ms N] (exit 1 after it; default
// 30000, none for serve, which runs until killed).
//
// Output: one JSON object per line on stdout, {"event": ...}: "ready" once subscribed, then per mode
// "invoke", "cancelled", "resolved", "rejected", "suppressed" (serve); "called", "resolve", "reject",
// "cancel", "ignored" (call); "published" (publish); "message", "parse-error" (subscribe); "done" last.
// Errors go to stderr and the exit code is 1.
import { randomUUID } from 'node:crypto'
import mqtt from 'mqtt'

const say = obj => process.stdout.write(JSON.stringify(obj) + '\n')
const fail = msg => {
  process.stderr.write(`peer: ${msg}\n`)
  process.exit(1)
}

function parseArgs(argv) {
  const [mode, ...rest] = argv
  const opts = { mode }
  for (let i = 0; i < rest.length; i += 2) {
    if (!rest[i].startsWith('--') || i + 1 >= rest.length) fail(`bad argument ${rest[i]}`)
    opts[rest[i].slice(2)] = rest[i + 1]
  }
  return opts
}

// xy-mqtt's client, reduced to what the protocol needs.
class XyPeer {
  constructor({ url, clientId, protocolVersion }) {
    this.handlers = new Map() // topic -> fn(payload)
    this.commands = new Map() // command -> handler
    this.running = new Map() // messageId -> {cancelled, onCancel}
    this.cancelledEarly = new Set() // cancels that came before their invoke
    this.client = mqtt.connect(url.replace(/^tcp:/, 'mqtt:'), {
      clientId,
      clean: false,
      protocolVersion,
      reconnectPeriod: 200,
      ...(protocolVersion === 5 ? { properties: { sessionExpiryInterval: 3600 } } : {})
    })
    this.client.on('message', (topic, buf) => this.onMessage(topic, buf))
    this.client.on('error', e => process.stderr.write(`peer: mqtt error: ${e.message}\n`))
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

  // As xy-mqtt: a handler that throws is retried with exponential backoff (capped at 12.8 s);
  // a payload that does not parse is reported and consumed.
  async onMessage(topic, buf) {
    const fn = this.handlers.get(topic)
    if (!fn) return
    let payload
    try {
      payload = JSON.parse(buf.toString('utf8'))
    } catch (e) {
      say({ event: 'parse-error', topic, raw: buf.toString('utf8'), error: e.message })
      return
    }
    for (let delay = 100; ; delay = Math.min(delay * 2, 12800)) {
      try {
        await fn(payload, topic)
        return
      } catch (e) {
        process.stderr.write(`peer: handler of ${topic} failed (${e && e.message}), retrying\n`)
        await new Promise(r => setTimeout(r, delay))
      }
    }
  }

  async command_register(command, handler) {
    if (this.commands.has(command)) throw new Error(`CommandAlreadyRegistered: ${command}`)
    this.commands.set(command, handler)
    await this.subscribe(`${command}/cancel`, payload => {
      const call = this.running.get(payload.messageId)
      if (!call) {
        this.cancelledEarly.add(payload.messageId)
        return
      }
      if (call.cancelled) return
      call.cancelled = true
      for (const cb of call.onCancel) cb()
    })
    await this.subscribe(`${command}/invoke`, async payload => {
      const { messageId, ...request } = payload
      if (this.cancelledEarly.delete(messageId)) return
      const call = { cancelled: false, onCancel: [] }
      this.running.set(messageId, call)
      let topic, answer
      try {
        const result = await handler(request, cb => call.onCancel.push(cb), messageId)
        topic = 'resolve'
        answer = { ...result, messageId }
      } catch (e) {
        topic = 'reject'
        answer =
          e && typeof e === 'object' && e.ok === false
            ? { ...e, messageId }
            : { messageId, ok: false, status: 500, message: String((e && e.message) || e) }
      } finally {
        this.running.delete(messageId)
      }
      if (call.cancelled) {
        say({ event: 'suppressed', messageId, topic })
        return
      }
      await this.publish(`${command}/${topic}`, answer)
      say({ event: topic === 'resolve' ? 'resolved' : 'rejected', messageId, payload: answer })
    })
  }

  call(command, request) {
    if (!this.handlers.has(`${command}/resolve`) || !this.handlers.has(`${command}/reject`))
      throw new Error(`CallWithNoSubscription: ${command}`)
    const messageId = randomUUID()
    const sent = this.publish(`${command}/invoke`, { ...request, messageId })
    return { messageId, sent, cancel: () => this.publish(`${command}/cancel`, { messageId }) }
  }

  end() {
    return this.client.endAsync()
  }
}

async function serve(peer, o) {
  const delay = Number(o['delay-ms'] || 0)
  await peer.command_register(o.command, async (request, onCancel, messageId) => {
    say({ event: 'invoke', messageId, request })
    const n = request.n
    switch (request.do) {
      case 'throw':
        throw new Error(`js failure ${n}`)
      case 'reject-object':
        throw { ok: false, status: 409, message: 'js conflict', detail: { n } }
      case 'reject-plain':
        throw { ok: false, message: 'random failure' }
      case 'wait-cancel': {
        await new Promise(resolve => {
          onCancel(() => {
            say({ event: 'cancelled', messageId })
            resolve()
          })
        })
        return { late: true }
      }
      default:
        if (delay) await new Promise(r => setTimeout(r, delay))
        return { echo: n, from: 'js' }
    }
  })
  say({ event: 'ready' })
  await new Promise(() => {}) // serves until killed
}

async function call(peer, o) {
  let requests
  if (o.requests) requests = JSON.parse(o.requests)
  else {
    const template = o.request ? JSON.parse(o.request) : {}
    requests = Array.from({ length: Number(o.count || 1) }, (_, i) => ({ n: i, ...template }))
  }
  const calls = new Map() // messageId -> {index, cancel, cancelled, done}
  let finish
  const finished = new Promise(r => (finish = r))
  const check = () => {
    if ([...calls.values()].every(c => c.done || c.cancelled)) finish()
  }
  const onResult = kind => payload => {
    const c = calls.get(payload.messageId)
    if (!c) {
      say({ event: 'ignored', kind, payload }) // the protocol: unknown ids are ignored
      return
    }
    say({ event: kind, index: c.index, messageId: payload.messageId, payload })
    c.done = true
    check()
  }
  await peer.subscribe(`${o.command}/resolve`, onResult('resolve'))
  await peer.subscribe(`${o.command}/reject`, onResult('reject'))
  if (o['cancel-on']) {
    await peer.subscribe(o['cancel-on'], async ({ messageId }) => {
      const c = calls.get(messageId)
      if (!c || c.cancelled) return
      c.cancelled = true
      await c.cancel()
      say({ event: 'cancel', index: c.index, messageId })
      check()
    })
  }
  say({ event: 'ready' })
  const sent = []
  requests.forEach((request, index) => {
    const { messageId, cancel, sent: s } = peer.call(o.command, request)
    calls.set(messageId, { index, cancel, cancelled: false, done: false })
    sent.push(s)
    say({ event: 'called', index, messageId })
  })
  await Promise.all(sent)
  await finished
}

async function publish(peer, o) {
  const count = Number(o.count || 1)
  for (let n = 0; n < count; n++) {
    await peer.publish(o.topic, { n, from: 'js', text: 'héllo ✓' })
    say({ event: 'published', n })
  }
}

async function subscribe(peer, o) {
  const count = Number(o.count || 1)
  let seen = 0
  let finish
  const finished = new Promise(r => (finish = r))
  await peer.subscribe(o.topic, (payload, topic) => {
    say({ event: 'message', topic, payload })
    if (++seen >= count) finish()
  })
  say({ event: 'ready' })
  await finished
}

async function main() {
  const o = parseArgs(process.argv.slice(2))
  const modes = { serve, call, publish, subscribe }
  if (!modes[o.mode]) fail(`unknown mode ${o.mode} (serve, call, publish, subscribe)`)
  if (!o.broker || !o.id) fail('--broker and --id are required')
  const timeout = Number(o['timeout-ms'] || (o.mode === 'serve' ? 0 : 30000))
  if (timeout) setTimeout(() => fail(`timed out after ${timeout} ms`), timeout).unref()
  const peer = new XyPeer({ url: o.broker, clientId: o.id, protocolVersion: Number(o['mqtt-version'] || 4) })
  await peer.connected()
  await modes[o.mode](peer, o)
  await peer.end()
  say({ event: 'done' })
  process.exit(0)
}

main().catch(e => fail(e && e.stack ? e.stack : String(e)))
