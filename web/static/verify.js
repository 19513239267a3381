/* flopnet web leaderboard: this page checks itself in the visitor's browser.
 *
 * 1. The network manifest: its Ed25519 signature by the founder key, and the network id's
 *    fingerprint of that key (the id is the one thing a visitor must know to be the right one).
 * 2. Every entry of every validator chain up to the heads the page names: strict canonical
 *    msgpack, the validator's Ed25519 signature (WebCrypto; the vendored @noble/ed25519 where
 *    the browser lacks it), seq order and the SHA-256 hash link to the entry before.
 * 3. Every number, name and row the page marks as a claim (data-k) is recomputed from those
 *    entries with the ledger's rules and compared, value and written form.
 * The first failure is shown, and the page is marked tampered. Nothing here uses innerHTML.
 */
(function () {
  "use strict";

  const SCRIPT_URL = document.currentScript ? document.currentScript.src : "";
  const DAY = 86400;
  const RAC_HALF_LIFE = 7 * DAY;
  const ACTIVE_DAYS = [7, 50];
  const VOIDINGS_SHOWN = 50;
  const PREFIXES = ["", "k", "M", "G", "T", "P", "E", "Z", "Y"];
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  const encoder = new TextEncoder();

  class Tampered extends Error {}

  function statusLine(state, text) {
    const el = document.getElementById("verify");
    if (el) {
      el.textContent = text;
      el.className = "verify " + state;
      el.dataset.state = state;
    }
    document.body.dataset.verify = state;
  }

  // -- bytes ------------------------------------------------------------------------------------

  function hex(bytes) {
    let out = "";
    for (const b of bytes) out += b.toString(16).padStart(2, "0");
    return out;
  }

  function equalBytes(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  function compareBytes(a, b) {
    const n = Math.min(a.length, b.length);
    for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
    return a.length - b.length;
  }

  function concat(parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  const B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
  const peerIds = new Map();
  /** The libp2p peer id of an Ed25519 key (identity multihash of its protobuf form). */
  function peerId(keyHex) {
    let id = peerIds.get(keyHex);
    if (id !== undefined) return id;
    const data = Uint8Array.from([0, 36, 8, 1, 18, 32, ...keyHex.match(/../g).map((h) => parseInt(h, 16))]);
    let n = BigInt("0x" + hex(data));
    let out = "";
    while (n > 0n) {
      out = B58[Number(n % 58n)] + out;
      n /= 58n;
    }
    for (const b of data) {
      if (b !== 0) break;
      out = "1" + out;
    }
    peerIds.set(keyHex, out);
    return out;
  }

  // -- strict canonical msgpack (the encoding docs/protocol.md specifies) ------------------------

  function decode(bytes) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let p = 0;
    const need = (n) => {
      if (p + n > bytes.length) throw new Tampered("truncated msgpack");
    };
    const minimal = (ok) => {
      if (!ok) throw new Tampered("non-canonical msgpack");
    };
    const uint = (n) => {
      need(n);
      let v;
      if (n === 1) v = view.getUint8(p);
      else if (n === 2) v = view.getUint16(p);
      else if (n === 4) v = view.getUint32(p);
      else v = view.getBigUint64(p);
      p += n;
      return v;
    };
    const int = (n) => {
      need(n);
      let v;
      if (n === 1) v = view.getInt8(p);
      else if (n === 2) v = view.getInt16(p);
      else if (n === 4) v = view.getInt32(p);
      else v = view.getBigInt64(p);
      p += n;
      return v;
    };
    const small = (v) => (typeof v === "bigint" && v >= -(2n ** 53n) && v <= 2n ** 53n ? Number(v) : v);
    const take = (n) => {
      need(n);
      const out = bytes.subarray(p, p + n);
      p += n;
      return out;
    };
    const str = (n) => {
      try {
        return utf8.decode(take(n));
      } catch (e) {
        if (e instanceof Tampered) throw e;
        throw new Tampered("invalid UTF-8");
      }
    };
    function value(depth) {
      if (depth > 8) throw new Tampered("msgpack nested too deep");
      need(1);
      const t = bytes[p++];
      if (t <= 0x7f) return t;
      if (t >= 0xe0) return t - 0x100;
      if (t >= 0xa0 && t <= 0xbf) return str(t & 0x1f);
      if (t >= 0x90 && t <= 0x9f) return array(t & 0x0f, depth);
      if (t >= 0x80 && t <= 0x8f) return map(t & 0x0f, depth);
      switch (t) {
        case 0xc0:
          return null;
        case 0xc2:
          return false;
        case 0xc3:
          return true;
        case 0xc4: {
          const n = uint(1);
          return take(n);
        }
        case 0xc5: {
          const n = uint(2);
          minimal(n > 0xff);
          return take(n);
        }
        case 0xc6: {
          const n = uint(4);
          minimal(n > 0xffff);
          return take(n);
        }
        case 0xcb: {
          need(8);
          const v = view.getFloat64(p);
          p += 8;
          if (!Number.isFinite(v)) throw new Tampered("a float that is not finite");
          return v;
        }
        case 0xcc: {
          const v = uint(1);
          minimal(v > 0x7f);
          return v;
        }
        case 0xcd: {
          const v = uint(2);
          minimal(v > 0xff);
          return v;
        }
        case 0xce: {
          const v = uint(4);
          minimal(v > 0xffff);
          return v;
        }
        case 0xcf: {
          const v = uint(8);
          minimal(v > 0xffffffffn);
          return small(v);
        }
        case 0xd0: {
          const v = int(1);
          minimal(v < -32);
          return v;
        }
        case 0xd1: {
          const v = int(2);
          minimal(v < -128);
          return v;
        }
        case 0xd2: {
          const v = int(4);
          minimal(v < -32768);
          return v;
        }
        case 0xd3: {
          const v = int(8);
          minimal(v < -(2n ** 31n));
          return small(v);
        }
        case 0xd9: {
          const n = uint(1);
          minimal(n > 31);
          return str(n);
        }
        case 0xda: {
          const n = uint(2);
          minimal(n > 0xff);
          return str(n);
        }
        case 0xdb: {
          const n = uint(4);
          minimal(n > 0xffff);
          return str(n);
        }
        case 0xdc: {
          const n = uint(2);
          minimal(n > 15);
          return array(n, depth);
        }
        case 0xdd: {
          const n = uint(4);
          minimal(n > 0xffff);
          return array(n, depth);
        }
        case 0xde: {
          const n = uint(2);
          minimal(n > 15);
          return map(n, depth);
        }
        case 0xdf: {
          const n = uint(4);
          minimal(n > 0xffff);
          return map(n, depth);
        }
        default:
          throw new Tampered("a msgpack type the protocol does not use (0x" + t.toString(16) + ")");
      }
    }
    function array(n, depth) {
      const out = [];
      for (let i = 0; i < n; i++) out.push(value(depth + 1));
      return out;
    }
    function map(n, depth) {
      const out = Object.create(null);
      let last = null;
      for (let i = 0; i < n; i++) {
        const key = value(depth + 1);
        if (typeof key !== "string") throw new Tampered("a map key that is not a string");
        if (last !== null && compareCodePoints(last, key) >= 0) throw new Tampered("map keys out of order");
        last = key;
        out[key] = value(depth + 1);
      }
      return out;
    }
    const result = value(0);
    if (p !== bytes.length) throw new Tampered("bytes after the msgpack value");
    return result;
  }

  function compareCodePoints(a, b) {
    const x = Array.from(a, (c) => c.codePointAt(0));
    const y = Array.from(b, (c) => c.codePointAt(0));
    const n = Math.min(x.length, y.length);
    for (let i = 0; i < n; i++) if (x[i] !== y[i]) return x[i] - y[i];
    return x.length - y.length;
  }

  /** A record: a map with exactly these keys, each of the given kind. */
  function record(value, fields, what) {
    if (value === null || typeof value !== "object" || Array.isArray(value) || value instanceof Uint8Array)
      throw new Tampered(what + " is not a record");
    const keys = Object.keys(value).sort();
    const want = Object.keys(fields).sort();
    if (keys.join(",") !== want.join(",")) throw new Tampered(what + " has fields " + keys.join(", "));
    for (const [k, kind] of Object.entries(fields)) {
      const v = value[k];
      const ok =
        (kind === "int" && (Number.isInteger(v) || typeof v === "bigint")) ||
        (kind === "float" && typeof v === "number") ||
        (kind === "str" && typeof v === "string") ||
        (kind === "bin" && v instanceof Uint8Array) ||
        (kind === "key" && v instanceof Uint8Array && v.length === 32) ||
        (kind === "bool" && typeof v === "boolean") ||
        (kind === "strs" && Array.isArray(v) && v.every((s) => typeof s === "string")) ||
        (kind === "keys" && Array.isArray(v) && v.every((s) => s instanceof Uint8Array && s.length === 32)) ||
        kind === "any";
      if (!ok) throw new Tampered(what + ": field " + k + " is not a " + kind);
    }
    return value;
  }

  const ENVELOPE = { v: "int", type: "str", body: "bin", signer: "key", sig: "bin" };
  const ENTRY = { version: "int", seq: "int", prev_hash: "bin", timestamp: "float", kind: "str", body: "bin" };
  const BODIES = {
    credit: {
      contributor: "key", lease_id: "bin", submission_id: "bin", task_id: "str", sample_index: "int",
      prompt_tokens: "int", generated_tokens: "int", flops: "int", flop_formula: "str",
      accepted: "bool", answer_score: "float", reasons: "strs",
    },
    invalidation: {
      contributor: "key", severity: "str", credit_signer: "key", credit_seq: "int",
      submission_id: "bin", reason: "str",
    },
    audit: {
      contributor: "key", submission_id: "bin", passed: "bool", rate: "float",
      consecutive_valid: "int", reasons: "strs",
    },
    profile: { profile: "bin" },
  };
  const PROFILE = { version: "int", display_name: "str", team: "str", updated_at: "float" };

  function signedBytes(networkId, type, body) {
    return concat([encoder.encode("flopnet/1\0" + networkId + "\0" + type + "\0"), body]);
  }

  // -- Ed25519: WebCrypto, or the vendored @noble/ed25519 where the browser has none -------------

  const ed = { mode: "webcrypto", keys: new Map(), noble: null };

  async function useNoble() {
    ed.mode = "noble";
    ed.noble = await import(new URL("noble-ed25519.js", SCRIPT_URL).href);
  }

  async function verifySig(keyBytes, sig, message) {
    if (sig.length !== 64) return false;
    if (ed.mode === "webcrypto") {
      const id = hex(keyBytes);
      let key = ed.keys.get(id);
      if (key === undefined) {
        try {
          key = await crypto.subtle.importKey("raw", keyBytes, { name: "Ed25519" }, false, ["verify"]);
        } catch (e) {
          if (ed.keys.size > 0) return false; // Ed25519 works here: this key is not a key
          await useNoble();
          return verifySig(keyBytes, sig, message);
        }
        ed.keys.set(id, key);
      }
      return crypto.subtle.verify({ name: "Ed25519" }, key, sig, message);
    }
    try {
      return await ed.noble.verifyAsync(sig, message, keyBytes, { zip215: false });
    } catch (e) {
      return false;
    }
  }

  // -- fetching ---------------------------------------------------------------------------------

  async function fetchBytes(url, optional) {
    const response = await fetch(url, { cache: "no-cache" });
    if (!response.ok) {
      if (optional) return null;
      throw new Tampered("cannot fetch " + url + " (HTTP " + response.status + ")");
    }
    return new Uint8Array(await response.arrayBuffer());
  }

  function splitChunk(bytes) {
    const out = [];
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let p = 0;
    while (p < bytes.length) {
      if (p + 4 > bytes.length) throw new Tampered("a chain file ends inside a length");
      const n = view.getUint32(p);
      if (n > 81920 || p + 4 + n > bytes.length) throw new Tampered("a chain file holds a cut entry");
      out.push(bytes.subarray(p + 4, p + 4 + n));
      p += 4 + n;
    }
    return out;
  }

  // -- the manifest and the chains --------------------------------------------------------------

  async function checkManifest(ctx) {
    const raw = await fetchBytes(ctx.root + "ledger/manifest.bin");
    const env = record(decode(raw), ENVELOPE, "the manifest envelope");
    if (env.v !== 1 || env.type !== "network_manifest") throw new Tampered("the manifest is not a network_manifest");
    const body = decode(env.body);
    if (typeof body.network_id !== "string" || !(body.founder instanceof Uint8Array))
      throw new Tampered("the manifest has no network id or founder");
    if (!Array.isArray(body.validators) || typeof body.lock_window_seconds !== "number")
      throw new Tampered("the manifest has no validators or lock window");
    if (body.network_id !== ctx.network)
      throw new Tampered("the manifest is for network " + body.network_id + ", the page names " + ctx.network);
    if (!equalBytes(env.signer, body.founder)) throw new Tampered("the manifest is not signed by its founder");
    const fingerprint = hex(await sha256(body.founder)).slice(0, 16);
    if (!body.network_id.endsWith("-" + fingerprint))
      throw new Tampered("the network id does not end with the founder key's fingerprint");
    if (!(await verifySig(env.signer, env.sig, signedBytes(body.network_id, "network_manifest", env.body))))
      throw new Tampered("bad founder signature on the manifest");
    if (body.lock_window_seconds !== ctx.lock)
      throw new Tampered("the page says credit is pending for " + ctx.lock + " s, the manifest " + body.lock_window_seconds + " s");
    return { validators: body.validators.map(hex) };
  }

  function chainClaims() {
    const rows = document.querySelectorAll('table[data-list="chains"] tbody tr');
    return Array.from(rows, (tr) => {
      const seqCell = tr.querySelector('[data-k="h.seq"]');
      if (!seqCell) throw new Tampered("a chain row has no head seq");
      return { signer: tr.dataset.sig, seq: Number(seqCell.dataset.v) };
    });
  }

  async function checkChain(ctx, claim, model, progress) {
    const signer = Uint8Array.from(claim.signer.match(/../g).map((h) => parseInt(h, 16)));
    const who = "validator " + peerId(claim.signer);
    let prev = new Uint8Array(32);
    let expected = 0;
    const last = claim.seq;
    for (let start = 0; start <= last; start += ctx.chunk) {
      const url = ctx.root + "ledger/" + claim.signer + "/" + start + ".bin";
      const envelopes = splitChunk(await fetchBytes(url)).slice(0, last - start + 1);
      if (envelopes.length === 0) break;
      const decoded = [];
      for (const data of envelopes) {
        const seq = expected + decoded.length;
        const name = "entry seq " + seq + " of " + who;
        let env, entry;
        try {
          env = record(decode(data), ENVELOPE, "the envelope");
          if (env.v !== 1 || env.type !== "ledger_entry") throw new Tampered("not a ledger entry");
          entry = record(decode(env.body), ENTRY, "the entry");
        } catch (e) {
          if (e instanceof Tampered) throw new Tampered(name + ": " + e.message);
          throw e;
        }
        if (!equalBytes(env.signer, signer)) throw new Tampered(name + ": signed by another key");
        if (entry.seq !== seq) throw new Tampered(name + ": it says seq " + entry.seq);
        decoded.push({ data, env, entry });
      }
      const hashes = await Promise.all(decoded.map((d) => sha256(d.data)));
      const sigs = await Promise.all(
        decoded.map((d) => verifySig(signer, d.env.sig, signedBytes(ctx.network, "ledger_entry", d.env.body)))
      );
      for (let i = 0; i < decoded.length; i++) {
        const { entry, env } = decoded[i];
        const name = "entry seq " + entry.seq + " (" + hex(hashes[i]).slice(0, 12) + ") of " + who;
        if (!sigs[i]) throw new Tampered(name + ": bad signature");
        if (!equalBytes(entry.prev_hash, prev))
          throw new Tampered(name + ": its prev_hash does not match the hash of the entry before");
        try {
          await collect(ctx, claim.signer, entry, hashes[i], model);
        } catch (e) {
          if (e instanceof Tampered) throw new Tampered(name + ": " + e.message);
          throw e;
        }
        prev = hashes[i];
        void env;
      }
      expected += decoded.length;
      progress(decoded.length);
      if (envelopes.length < ctx.chunk && expected <= last) break;
    }
    if (expected !== last + 1)
      throw new Tampered(who + "'s chain ends at seq " + (expected - 1) + ", the page names head seq " + last);
    model.heads.set(claim.signer, { seq: last, hash: hex(prev), count: expected });
  }

  async function collect(ctx, signerHex, entry, hash, model) {
    const fields = BODIES[entry.kind];
    if (!fields) throw new Tampered("unknown entry kind " + entry.kind);
    const body = record(decode(entry.body), fields, "the " + entry.kind + " body");
    const t = entry.timestamp;
    model.times.set(signerHex, t);
    if (entry.kind === "credit") {
      model.credits.push({
        signer: signerHex, seq: entry.seq, hash: hex(hash), t, c: hex(body.contributor),
        flops: BigInt(body.flops), tokens: BigInt(body.generated_tokens), accepted: body.accepted,
        task: body.task_id + " #" + body.sample_index, reasons: body.reasons, voided: false,
      });
    } else if (entry.kind === "invalidation") {
      model.invalidations.push({
        signer: signerHex, seq: entry.seq, t, c: hex(body.contributor), severity: body.severity,
        creditSigner: hex(body.credit_signer), creditSeq: Number(body.credit_seq), reason: body.reason,
      });
    } else if (entry.kind === "profile") {
      const env = record(decode(body.profile), ENVELOPE, "the profile envelope");
      if (env.v !== 1 || env.type !== "contributor_profile") throw new Tampered("not a contributor profile");
      const profile = record(decode(env.body), PROFILE, "the profile");
      if (!(await verifySig(env.signer, env.sig, signedBytes(ctx.network, "contributor_profile", env.body))))
        throw new Tampered("bad contributor signature on the profile inside");
      const id = await sha256(body.profile);
      const who = hex(env.signer);
      const old = model.profiles.get(who);
      const newer =
        !old || profile.updated_at > old.updated || (profile.updated_at === old.updated && compareBytes(id, old.id) > 0);
      if (newer) model.profiles.set(who, { name: profile.display_name, team: profile.team, updated: profile.updated_at, id });
    }
  }

  // -- the ledger's rules (ledger/policy.py, ledger/leaderboard.py) ------------------------------

  function applyVoids(model, lock) {
    model.byC = new Map(); // each contributor's credits, so per-row sums need not scan them all
    for (const credit of model.credits) {
      if (!model.byC.has(credit.c)) model.byC.set(credit.c, []);
      model.byC.get(credit.c).push(credit);
    }
    const byContributor = new Map();
    for (const inv of model.invalidations) {
      if (!byContributor.has(inv.c)) byContributor.set(inv.c, []);
      byContributor.get(inv.c).push(inv);
    }
    for (const credit of model.credits) {
      if (!credit.accepted) continue;
      for (const inv of byContributor.get(credit.c) || []) {
        if (!(inv.t - lock < credit.t && credit.t <= inv.t)) continue;
        if (inv.severity === "hard" || (inv.creditSigner === credit.signer && inv.creditSeq === credit.seq)) {
          credit.voided = true;
          break;
        }
      }
    }
  }

  function windowSums(model, since) {
    const key = since === null ? "all" : String(since);
    const cached = model.sums.get(key);
    if (cached) return cached;
    const out = new Map();
    for (const cr of model.credits) {
      if (since !== null && cr.t < since) continue;
      let row = out.get(cr.c);
      if (!row) {
        row = { flops: 0n, accepted: 0n, rejected: 0n, tokens: 0n, voided: 0n, voidedFlops: 0n };
        out.set(cr.c, row);
      }
      if (!cr.accepted) row.rejected += 1n;
      else if (cr.voided) {
        row.voided += 1n;
        row.voidedFlops += cr.flops;
      } else {
        row.accepted += 1n;
        row.flops += cr.flops;
        row.tokens += cr.tokens;
      }
    }
    model.sums.set(key, out);
    return out;
  }

  const ZERO = { flops: 0n, accepted: 0n, rejected: 0n, tokens: 0n, voided: 0n, voidedFlops: 0n };

  function windowStart(ctx, w) {
    const width = { all: null, "30d": 30 * DAY, "7d": 7 * DAY, "24h": DAY }[w];
    if (width === undefined) throw new Tampered("unknown window " + w);
    return width === null ? null : ctx.asOf - width;
  }

  function pendingStart(ctx, since) {
    const from = ctx.asOf - ctx.lock;
    return since === null ? from : Math.max(since, from);
  }

  function ranking(model, since) {
    const sums = windowSums(model, since);
    return Array.from(sums.entries()).sort((a, b) =>
      a[1].flops !== b[1].flops ? (a[1].flops > b[1].flops ? -1 : 1) : a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0
    );
  }

  function rac(model, ctx, c) {
    const k = Math.LN2 / RAC_HALF_LIFE;
    let sum = 0;
    for (const cr of model.byC.get(c) || []) if (cr.accepted && !cr.voided) sum += Number(cr.flops) * Math.exp((cr.t - ctx.asOf) * k);
    return Math.max(0, Math.floor(sum * (Math.LN2 / (RAC_HALF_LIFE / DAY)) + 0.5));
  }

  function daily(model, ctx, c, days) {
    const today = Math.floor(ctx.asOf / DAY);
    const first = today - days + 1;
    const out = new Map();
    for (let d = first; d <= today; d++) out.set(d, 0n);
    for (const cr of c === null ? model.credits : model.byC.get(c) || []) {
      if (!cr.accepted || cr.voided) continue;
      const d = Math.floor(cr.t / DAY);
      if (out.has(d)) out.set(d, out.get(d) + cr.flops);
    }
    return out;
  }

  function profileOf(model, c) {
    return model.profiles.get(c) || { name: "", team: "" };
  }

  function total(sums, field) {
    let out = 0n;
    for (const row of sums.values()) out += row[field];
    return out;
  }

  function teams(model, ctx) {
    const all = windowSums(model, null);
    const pending = windowSums(model, pendingStart(ctx, null));
    const day = windowSums(model, ctx.asOf - DAY);
    const week = windowSums(model, ctx.asOf - 7 * DAY);
    const out = new Map();
    for (const [c, row] of all) {
      const team = profileOf(model, c).team;
      if (!team) continue;
      let t = out.get(team);
      if (!t) {
        t = { team, members: 0n, flops: 0n, pending: 0n, final: 0n, day: 0n, week: 0n, accepted: 0n, tokens: 0n };
        out.set(team, t);
      }
      const p = (pending.get(c) || ZERO).flops;
      t.members += 1n;
      t.flops += row.flops;
      t.pending += p;
      t.final += row.flops - p;
      t.day += (day.get(c) || ZERO).flops;
      t.week += (week.get(c) || ZERO).flops;
      t.accepted += row.accepted;
      t.tokens += row.tokens;
    }
    return Array.from(out.values()).sort((a, b) =>
      a.flops !== b.flops ? (a.flops > b.flops ? -1 : 1) : compareCodePoints(a.team, b.team)
    );
  }

  // -- how numbers are written (web/units.py) ---------------------------------------------------

  function roundDiv(n, d) {
    return (2n * n + d) / (2n * d);
  }

  function human(v, unit) {
    if (v < 0n) return "-" + human(-v, unit);
    if (v < 1000n) return v + " " + unit;
    let power = 1;
    while (power + 1 < PREFIXES.length && v >= 1000n ** BigInt(power + 1)) power++;
    let scaled, decimals;
    for (;;) {
      const base = 1000n ** BigInt(power);
      const whole = v / base;
      decimals = whole < 10n ? 2 : whole < 100n ? 1 : 0;
      scaled = roundDiv(v * 10n ** BigInt(decimals), base);
      if (scaled < 1000n || power + 1 === PREFIXES.length) break;
      if (decimals > 0) {
        scaled = roundDiv(v * 10n ** BigInt(decimals - 1), base);
        decimals -= 1;
        if (scaled < 1000n) break;
      }
      power++;
    }
    let text = scaled.toString();
    if (decimals) text = text.slice(0, -decimals) + "." + text.slice(-decimals);
    return text + " " + PREFIXES[power] + unit;
  }

  function count(v) {
    const s = BigInt(v).toString();
    const neg = s.startsWith("-");
    const digits = neg ? s.slice(1) : s;
    return (neg ? "-" : "") + digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  function utc(t) {
    const s = new Date(Math.floor(t) * 1000).toISOString();
    return s.slice(0, 10) + " " + s.slice(11, 19) + " UTC";
  }

  const FORMATS = {
    flop: (v) => human(BigInt(v), "FLOP"),
    rate: (v) => human(BigInt(v), "FLOP") + "/day",
    int: (v) => count(v),
    time: (v) => utc(Number(v)),
    day: (v) => new Date(Number(v) * DAY * 1000).toISOString().slice(0, 10),
    hash: (v) => String(v).slice(0, 12),
  };

  function tenths(n) {
    return Math.floor(n / 10) + "." + (n % 10);
  }

  // -- checking the page's claims ----------------------------------------------------------------

  function checkClaims(ctx, model) {
    let checked = 0;
    const fail = (el, what, said, truth) => {
      const where = el.closest("tr") ? " (row " + (Array.from(el.closest("tbody") ? el.closest("tbody").rows : []).indexOf(el.closest("tr")) + 1) + ")" : "";
      throw new Tampered("the page says " + JSON.stringify(String(said)) + " for " + what + where + "; the signed entries give " + JSON.stringify(String(truth)));
    };
    const expect = (el, truth, opts) => {
      const key = el.dataset.k;
      const fmt = el.dataset.f;
      if (fmt === "text") {
        if (el.textContent !== truth) fail(el, key, el.textContent, truth);
      } else {
        const said = el.dataset.v;
        if (said === undefined || !(fmt in FORMATS)) throw new Tampered("the claim " + key + " has no value or an unknown form");
        if (opts && opts.tolerance) {
          const diff = Math.abs(Number(said) - truth);
          if (!(diff <= Math.max(1, Math.abs(truth) * 1e-9))) fail(el, key, said, truth);
        } else if (fmt === "time") {
          if (Number(said) !== truth) fail(el, key, said, truth);
        } else if (String(truth) !== said) fail(el, key, said, truth);
        const written = FORMATS[fmt](said);
        if (el.textContent !== written) fail(el, key + " as written", el.textContent, written);
      }
      el.dataset.checked = "1";
      checked++;
    };
    const cell = (row, key) => {
      const el = row.querySelector('[data-k="' + key + '"]');
      if (!el) throw new Tampered("a row lacks its " + key);
      return el;
    };
    const listRows = (name) => {
      const table = document.querySelector('table[data-list="' + name + '"]');
      if (!table) return null;
      for (const td of table.querySelectorAll("tbody td"))
        if (!td.dataset.k) throw new Tampered("the " + name + " table holds a cell that is not a claim");
      return { table, rows: Array.from(table.querySelectorAll("tbody tr")) };
    };

    // Chain heads.
    const chains = listRows("chains");
    for (const tr of chains.rows) {
      const head = model.heads.get(tr.dataset.sig);
      expect(cell(tr, "h.peer"), peerId(tr.dataset.sig));
      expect(cell(tr, "h.entries"), head.count);
      expect(cell(tr, "h.seq"), head.seq);
      expect(cell(tr, "h.hash"), head.hash);
      expect(cell(tr, "h.time"), model.times.get(tr.dataset.sig));
    }

    const page = ctx.page;
    if (page === "board") {
      const since = windowStart(ctx, ctx.window);
      const sums = windowSums(model, since);
      const pending = windowSums(model, pendingStart(ctx, since));
      const flops = total(sums, "flops");
      const pendingFlops = total(pending, "flops");
      const net = {
        "n.flops": flops, "n.pending": pendingFlops, "n.final": flops - pendingFlops,
        "n.voided_flops": total(sums, "voidedFlops"), "n.tokens": total(sums, "tokens"),
        "n.accepted": total(sums, "accepted"), "n.rejected": total(sums, "rejected"),
        "n.voided": total(sums, "voided"), "n.contributors": BigInt(sums.size),
        "n.flops24h": total(windowSums(model, ctx.asOf - DAY), "flops"),
        "n.perday7": total(windowSums(model, ctx.asOf - 7 * DAY), "flops") / 7n,
      };
      for (const d of ACTIVE_DAYS) {
        let n = 0n;
        for (const row of windowSums(model, ctx.asOf - d * DAY).values()) if (row.accepted > 0n) n++;
        net["n.active" + d] = n;
      }
      for (const [k, v] of Object.entries(net)) {
        const els = document.querySelectorAll('main [data-k="' + k + '"]');
        if (els.length !== 1) throw new Tampered("the page shows " + els.length + " values for " + k);
        expect(els[0], v);
      }
      checkChart(model, ctx, null);

      const { table, rows } = listRows("ranking");
      const offset = Number(table.dataset.offset);
      if (offset !== ctx.offset) throw new Tampered("the ranking starts at " + offset + ", the page at " + ctx.offset);
      const ranked = ranking(model, since);
      if (Number(table.dataset.total) !== ranked.length)
        throw new Tampered("the page counts " + table.dataset.total + " contributors in the window, the entries " + ranked.length);
      const want = ranked.slice(offset, offset + Number(table.dataset.limit));
      if (rows.length !== want.length)
        throw new Tampered("the ranking shows " + rows.length + " rows, the entries give " + want.length);
      rows.forEach((tr, i) => {
        const [c, row] = want[i];
        if (tr.dataset.c !== c)
          throw new Tampered("rank " + (offset + i + 1) + " is " + peerId(tr.dataset.c || "00".repeat(32)) + " on the page, " + peerId(c) + " in the entries");
        const p = (pending.get(c) || ZERO).flops;
        const prof = profileOf(model, c);
        expect(cell(tr, "rank"), offset + i + 1);
        expect(cell(tr, "name"), prof.name || peerId(c));
        expect(cell(tr, "team"), prof.team);
        expect(cell(tr, "flops"), row.flops);
        expect(cell(tr, "pending"), p);
        expect(cell(tr, "final"), row.flops - p);
        expect(cell(tr, "voided_flops"), row.voidedFlops);
        expect(cell(tr, "accepted"), row.accepted);
        expect(cell(tr, "rejected"), row.rejected);
        expect(cell(tr, "rac"), rac(model, ctx, c), { tolerance: true });
      });

      const voidings = listRows("voidings");
      const invs = model.invalidations
        .slice()
        .sort((a, b) => b.t - a.t || (a.signer < b.signer ? -1 : a.signer > b.signer ? 1 : b.seq - a.seq))
        .slice(0, VOIDINGS_SHOWN);
      if (voidings.rows.length !== invs.length)
        throw new Tampered("the page lists " + voidings.rows.length + " invalidations, the entries give " + invs.length);
      voidings.rows.forEach((tr, i) => {
        const inv = invs[i];
        if (tr.dataset.sig !== inv.signer || Number(tr.dataset.seq) !== inv.seq)
          throw new Tampered("invalidation " + (i + 1) + " on the page is not the entries' " + (i + 1) + "th newest");
        expect(cell(tr, "v.time"), inv.t);
        expect(cell(tr, "v.contributor"), peerId(inv.c));
        expect(cell(tr, "v.severity"), inv.severity);
        expect(cell(tr, "v.reason"), inv.reason);
        expect(cell(tr, "v.entry"), peerId(inv.signer) + " seq " + inv.seq);
      });
    } else if (page === "contributor") {
      const c = ctx.contributor;
      const prof = profileOf(model, c);
      const all = windowSums(model, null).get(c) || ZERO;
      const p = (windowSums(model, pendingStart(ctx, null)).get(c) || ZERO).flops;
      const mine = (model.byC.get(c) || []).slice();
      const single = {
        "c.name": prof.name, "c.team": prof.team, "c.total": all.flops, "c.pending": p,
        "c.final": all.flops - p, "c.credits": mine.length,
      };
      for (const [k, v] of Object.entries(single)) {
        const els = document.querySelectorAll('main [data-k="' + k + '"]');
        if (els.length !== 1) throw new Tampered("the page shows " + els.length + " values for " + k);
        expect(els[0], v);
      }
      const racEl = document.querySelectorAll('main [data-k="c.rac"]');
      if (racEl.length !== 1) throw new Tampered("the page shows " + racEl.length + " RAC values");
      expect(racEl[0], rac(model, ctx, c), { tolerance: true });
      checkChart(model, ctx, c);
      const windows = listRows("windows");
      if (windows.rows.length !== 4) throw new Tampered("the page shows " + windows.rows.length + " windows");
      for (const tr of windows.rows) {
        const row = windowSums(model, windowStart(ctx, tr.dataset.w)).get(c) || ZERO;
        expect(cell(tr, "c.flops"), row.flops);
        expect(cell(tr, "c.voided_flops"), row.voidedFlops);
        expect(cell(tr, "c.accepted"), row.accepted);
        expect(cell(tr, "c.rejected"), row.rejected);
        expect(cell(tr, "c.voided"), row.voided);
        expect(cell(tr, "c.tokens"), row.tokens);
      }
      const credits = listRows("credits");
      mine.sort((a, b) => b.t - a.t || (a.signer < b.signer ? -1 : a.signer > b.signer ? 1 : b.seq - a.seq));
      const offset = Number(credits.table.dataset.offset);
      const want = mine.slice(offset, offset + Number(credits.table.dataset.limit));
      if (Number(credits.table.dataset.total) !== mine.length)
        throw new Tampered("the page counts " + credits.table.dataset.total + " credit entries, the chains hold " + mine.length);
      if (credits.rows.length !== want.length)
        throw new Tampered("the page lists " + credits.rows.length + " credit entries, the entries give " + want.length);
      const invs = model.invalidations
        .filter((inv) => inv.c === c)
        .sort((a, b) => a.t - b.t || (a.signer < b.signer ? -1 : a.signer > b.signer ? 1 : a.seq - b.seq));
      credits.rows.forEach((tr, i) => {
        const cr = want[i];
        if (tr.dataset.sig !== cr.signer || Number(tr.dataset.seq) !== cr.seq)
          throw new Tampered("credit row " + (i + 1) + " is not the entries' " + (offset + i + 1) + "th newest credit");
        let state, note;
        if (!cr.accepted) {
          state = "rejected";
          note = cr.reasons.join("; ");
        } else if (cr.voided) {
          state = "void";
          const by = invs.find(
            (inv) => inv.t - ctx.lock < cr.t && cr.t <= inv.t && (inv.severity === "hard" || (inv.creditSigner === cr.signer && inv.creditSeq === cr.seq))
          );
          note = "voided by " + peerId(by.signer) + " seq " + by.seq + ": " + by.reason;
        } else {
          state = cr.t >= ctx.asOf - ctx.lock ? "pending" : "final";
          note = "";
        }
        expect(cell(tr, "e.time"), cr.t);
        expect(cell(tr, "e.entry"), peerId(cr.signer) + " seq " + cr.seq);
        expect(cell(tr, "e.hash"), cr.hash);
        expect(cell(tr, "e.task"), cr.task);
        expect(cell(tr, "e.flops"), cr.flops);
        expect(cell(tr, "e.tokens"), cr.tokens);
        expect(cell(tr, "e.state"), state);
        expect(cell(tr, "e.note"), note);
      });
    } else if (page === "teams") {
      const { rows } = listRows("teams");
      const want = teams(model, ctx);
      if (rows.length !== want.length) throw new Tampered("the page lists " + rows.length + " teams, the entries give " + want.length);
      rows.forEach((tr, i) => {
        const t = want[i];
        expect(cell(tr, "t.rank"), i + 1);
        expect(cell(tr, "t.team"), t.team);
        expect(cell(tr, "t.members"), t.members);
        expect(cell(tr, "t.flops"), t.flops);
        expect(cell(tr, "t.pending"), t.pending);
        expect(cell(tr, "t.final"), t.final);
        expect(cell(tr, "t.flops24h"), t.day);
        expect(cell(tr, "t.flops7d"), t.week);
        expect(cell(tr, "t.accepted"), t.accepted);
        expect(cell(tr, "t.tokens"), t.tokens);
      });
    } else {
      throw new Tampered("unknown page kind " + page);
    }
    const unchecked = document.querySelectorAll("[data-k]:not([data-checked])");
    if (unchecked.length) throw new Tampered("the page holds a claim this checker does not know: " + unchecked[0].dataset.k);
    return checked;
  }

  function checkChart(model, ctx, c) {
    const svg = document.querySelector("main svg[data-chart]");
    if (!svg) throw new Tampered("the chart is missing");
    const n = Number(svg.dataset.days);
    if (!(n >= 1 && n <= 366)) throw new Tampered("the chart spans " + svg.dataset.days + " days");
    const days = daily(model, ctx, c, n);
    const bars = Array.from(svg.querySelectorAll("rect"));
    const want = Array.from(days.entries());
    if (bars.length !== want.length) throw new Tampered("the chart shows " + bars.length + " days, not " + want.length);
    let peak = 0n;
    for (const [, v] of want) if (v > peak) peak = v;
    bars.forEach((bar, i) => {
      const [day, value] = want[i];
      if (Number(bar.dataset.day) !== day) throw new Tampered("chart bar " + (i + 1) + " is for another day");
      if (bar.dataset.k !== "day" || bar.dataset.v !== String(value))
        throw new Tampered("the chart says " + bar.dataset.v + " FLOPs on day " + FORMATS.day(day) + "; the entries give " + value);
      const h = peak > 0n && value > 0n ? Number((2n * value * 1400n + peak) / (2n * peak)) : 0;
      if (bar.getAttribute("height") !== tenths(h) || bar.getAttribute("y") !== tenths(1500 - h))
        throw new Tampered("chart bar " + FORMATS.day(day) + " is drawn at the wrong height");
      bar.dataset.checked = "1";
    });
  }

  // -- main -------------------------------------------------------------------------------------

  async function main() {
    const b = document.body.dataset;
    if (location.protocol === "file:") {
      statusLine(
        "unchecked",
        "Not checked: opened from a file, and browsers do not let a page read the files beside it. " +
          "Serve this folder over http (for example python3 -m http.server) and open it there."
      );
      return;
    }
    if (!window.crypto || !crypto.subtle || typeof BigInt !== "function") {
      statusLine("unchecked", "Not checked: this browser has no WebCrypto or BigInt (or the page is not served over https).");
      return;
    }
    const ctx = {
      root: b.root || "",
      network: b.network,
      asOf: Number(b.asOf),
      lock: Number(b.lock),
      chunk: Number(b.chunk),
      page: b.page,
      window: b.window,
      offset: Number(b.offset || 0),
      contributor: b.c,
    };
    const started = performance.now();
    statusLine("checking", "Checking the manifest…");
    try {
      const manifest = await checkManifest(ctx);
      const claims = chainClaims();
      const listed = new Set(claims.map((c) => c.signer));
      for (const claim of claims)
        if (!manifest.validators.includes(claim.signer))
          throw new Tampered("the page lists the chain of " + peerId(claim.signer) + ", which the manifest does not name as a validator");
      for (const v of manifest.validators) {
        if (listed.has(v)) continue;
        const data = await fetchBytes(ctx.root + "ledger/" + v + "/0.bin", true);
        if (data && data.length) throw new Tampered("the page leaves out the chain of validator " + peerId(v));
      }
      const totalEntries = claims.reduce((n, c) => n + c.seq + 1, 0);
      const model = { credits: [], invalidations: [], profiles: new Map(), heads: new Map(), times: new Map(), sums: new Map() };
      let done = 0;
      for (const claim of claims)
        await checkChain(ctx, claim, model, (n) => {
          done += n;
          statusLine("checking", "Checking signatures and hash links: " + count(done) + " of " + count(totalEntries) + " entries…");
        });
      const chainsDone = performance.now();
      applyVoids(model, ctx.lock);
      const claimsChecked = checkClaims(ctx, model);
      const ms = Math.round(performance.now() - started);
      const phases = { chains_ms: Math.round(chainsDone - started), claims_ms: Math.round(performance.now() - chainsDone) };
      const how = ed.mode === "webcrypto" ? "WebCrypto Ed25519" : "@noble/ed25519 (this browser lacks WebCrypto Ed25519)";
      statusLine(
        "verified",
        "Verified in your browser: " + count(totalEntries) + " entries on " + claims.length +
          " validator chain" + (claims.length === 1 ? "" : "s") + ", every signature (" + how +
          ") and hash link, and the " + count(claimsChecked) + " numbers and names on this page (" + (ms / 1000).toFixed(1) + " s)."
      );
      window.flopnetCheck = { state: "verified", entries: totalEntries, claims: claimsChecked, ms, ...phases, ed25519: ed.mode };
    } catch (e) {
      const ms = Math.round(performance.now() - started);
      if (e instanceof Tampered) {
        statusLine("tampered", "TAMPERED: " + e.message + ".");
        window.flopnetCheck = { state: "tampered", message: e.message, ms, ed25519: ed.mode };
      } else {
        statusLine("error", "Could not check this page: " + (e && e.message ? e.message : String(e)));
        window.flopnetCheck = { state: "error", message: String(e && e.message ? e.message : e), ms };
      }
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
  else main();
})();
