#!/usr/bin/env python3
"""A guest chatting through both edges of a running compose stack (tests/deploy/compose-test).

One visitor, two tabs: tab A on the first edge, tab B on the second (identified with A's
visitorId and visitorToken, resuming the conversation from lastSeq 0). Tab A sends; every
message must be acknowledged, and both tabs must show every guest message and every butler
(concierge) reply exactly once, in seq order (tab A's own messages arrive as message_ack,
tab B's as `message` with role guest). A duplicate seq, a gap or a reordering is a failure.

Phases: ROUNDS messages; then --between (a shell command, e.g. `docker kill` a delivery
replica) and ROUNDS more messages with the same checks; with --attachment, one photo uploaded
on the presigned URL (to the S3 store's published port) and sent, seen and downloaded by tab B
byte for byte; finally a third tab resumes from lastSeq 0 and must get the whole conversation
as history. Like the widget, a tab whose socket closes reconnects (identify with its token
and lastSeq) and a sender resends on a retryable error with the same clientMessageId; both are
counted and printed.

Needs `websockets` (PyPI). Exit status 0 when every check passed.
"""

import argparse
import asyncio
import json
import secrets
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib

from websockets.asyncio.client import connect

WAIT = 30.0  # seconds any one expected frame may take (a failover included)


class Failure(Exception):
    pass


async def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout:.0f}s: {what}")
        await asyncio.sleep(0.02)


class Tab:
    """One WebSocket to an edge: what it was shown, in order, and what went wrong."""

    def __init__(self, name, base, hotel):
        self.name = name
        self.url = f"{base}/ws/chat?hotelId={hotel}"
        self.shown = {}  # seq -> {role, content, messageId, clientMessageId, via, attachments}
        self.order = []  # seqs in the order they were shown
        self.acks = {}  # clientMessageId -> message_ack
        self.errors = []  # error frames, with the time they came
        self.problems = []  # duplicates, gaps, reorderings
        self.identified = None
        self.identity = None  # what a reconnect identifies with
        self.reconnects = 0
        self.connections = 0
        self.ws = None
        self.reader_task = None
        self.stopping = False
        self.typing_frames = 0
        self.read_frames = 0

    def high(self):
        return self.order[-1] if self.order else 0

    def show(self, seq, entry):
        last = self.high()
        if seq in self.shown:
            first = self.shown[seq]
            self.problems.append(f"tab {self.name}: seq {seq} shown twice ({first['via']}, then {entry['via']})")
            return
        if seq != last + 1:
            self.problems.append(f"tab {self.name}: seq {seq} came after seq {last} (a gap or a reordering)")
        self.shown[seq] = entry
        self.order.append(seq)

    def on_frame(self, frame):
        kind = frame.get("type")
        if kind == "identified":
            self.identified = frame
        elif kind == "history":
            for m in frame["messages"]:
                self.show(m["seq"], entry(m, "history"))
        elif kind == "message":
            self.show(frame["seq"], entry(frame, "live"))
        elif kind == "message_ack":
            cmid = frame["clientMessageId"]
            earlier = self.acks.get(cmid)
            if earlier is not None:
                if earlier["seq"] != frame["seq"] or earlier["messageId"] != frame["messageId"]:
                    self.problems.append(f"tab {self.name}: {cmid} acknowledged as seq {earlier['seq']}, then as {frame['seq']}")
                return  # a resend's ack: the same message, stored once
            self.acks[cmid] = frame
            self.show(frame["seq"], {"role": "guest", "content": None, "messageId": frame["messageId"],
                                     "clientMessageId": cmid, "via": "ack", "attachments": []})
        elif kind == "error":
            frame["at"] = time.monotonic()
            self.errors.append(frame)
        elif kind == "typing":
            self.typing_frames += 1
        elif kind == "read":
            self.read_frames += 1

    async def open(self, identify):
        """Connects and identifies; the answer (history, then identified) is read by the reader."""
        self.ws = await connect(self.url, open_timeout=10, max_size=1 << 20)
        self.connections += 1
        first = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        if first.get("type") != "connected":
            raise Failure(f"tab {self.name}: the first frame is {first.get('type')!r}, not connected")
        self.identified = None
        self.reader_task = asyncio.create_task(self.reader())
        errors = len(self.errors)
        await self.ws.send(json.dumps({"type": "identify", **identify}))
        await wait_until(lambda: self.identified is not None or len(self.errors) > errors, 15,
                         f"tab {self.name}: no answer to identify")
        if self.identified is None:
            raise Failure(f"tab {self.name}: identify refused: {self.errors[-1]}")
        # Later identifies (reconnects) prove the visitor with the newest token.
        self.identity = {"visitorId": self.identified["visitorId"], "visitorToken": self.identified["visitorToken"]}
        return self.identified

    async def reader(self):
        ws = self.ws
        try:
            async for raw in ws:
                self.on_frame(json.loads(raw))
        except Exception as err:  # a dropped connection ends the loop the same way
            if not self.stopping:
                print(f"  tab {self.name}: connection lost: {err!r}", flush=True)
        if self.stopping:
            return
        print(f"  tab {self.name}: socket closed (code {ws.close_code} {ws.close_reason!r}); reconnecting", flush=True)
        asyncio.get_running_loop().create_task(self.reconnect())

    async def reconnect(self):
        delay = 0.25
        deadline = time.monotonic() + WAIT
        while not self.stopping:
            try:
                self.reconnects += 1
                await self.open({**self.identity, "lastSeq": self.high()})
                print(f"  tab {self.name}: reconnected, resumed after seq {self.high()}", flush=True)
                return
            except Exception as err:
                if time.monotonic() > deadline:
                    self.problems.append(f"tab {self.name}: could not reconnect within {WAIT:.0f}s: {err!r}")
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def send(self, frame):
        await self.ws.send(json.dumps(frame))

    async def send_message(self, cmid, content, attachments=None):
        """Sends until acknowledged, resending (same clientMessageId) after a retryable error or a reconnect."""
        deadline = time.monotonic() + WAIT
        resends = 0
        frame = {"type": "message", "clientMessageId": cmid, "content": content}
        if attachments:
            frame["attachments"] = attachments
        while True:
            errors, connections = len(self.errors), self.connections
            try:
                await self.send(frame)
            except Exception:
                pass  # the reader reconnects; wait for that below
            sent = time.monotonic()

            def answered():
                return cmid in self.acks or any(e.get("clientMessageId") == cmid for e in self.errors[errors:]) \
                    or self.connections != connections or time.monotonic() - sent > 10

            await wait_until(lambda: answered() or time.monotonic() > deadline, WAIT + 1, f"{cmid}: no answer")
            if cmid in self.acks:
                return self.acks[cmid], resends
            if time.monotonic() > deadline:
                raise Failure(f"tab {self.name}: {cmid} was never acknowledged (resent {resends} times)")
            refusal = next((e for e in self.errors[errors:] if e.get("clientMessageId") == cmid), None)
            if refusal is not None and not refusal.get("retryable"):
                raise Failure(f"tab {self.name}: {cmid} refused: {refusal}")
            wait_ms = (refusal or {}).get("retryAfterMs") or 500
            print(f"  {cmid}: {'retryable ' + refusal['code'] if refusal else 'no answer or reconnected'}; resending in {wait_ms} ms", flush=True)
            resends += 1
            await asyncio.sleep(wait_ms / 1000)
            await wait_until(lambda: self.ws is not None and self.ws.state.name == "OPEN", WAIT, f"tab {self.name}: not reconnected")

    async def close(self):
        self.stopping = True
        if self.ws is not None:
            await self.ws.close()
        if self.reader_task is not None:
            await asyncio.wait([self.reader_task], timeout=5)


def entry(m, via):
    return {"role": m["role"], "content": m["content"], "messageId": m["messageId"],
            "clientMessageId": m.get("clientMessageId"), "via": via, "attachments": m.get("attachments", [])}


def png_1x1():
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"\x00\xff\x80\x00"  # one filter byte, one orange RGB pixel
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def http(method, url, body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class Chat:
    def __init__(self, args):
        self.args = args
        self.run = secrets.token_hex(3)
        self.rounds = []  # (phase, cmid, guest seq, seconds to the butler's reply on both tabs)
        self.sent = {}  # cmid -> content

    async def round(self, phase, i, content, attachments=None):
        a, b = self.a, self.b
        cmid = f"ct-{self.run}-{i}"
        self.sent[cmid] = content
        started = time.monotonic()
        ack, resends = await a.send_message(cmid, content, attachments)
        seq = ack["seq"]
        await wait_until(lambda: seq in b.shown, WAIT, f"tab B never showed guest message {cmid} (seq {seq})")
        got = b.shown[seq]
        if got["role"] != "guest" or got["clientMessageId"] != cmid or got["content"] != content:
            raise Failure(f"tab B shows seq {seq} as {got}, expected guest message {cmid} {content!r}")
        if got["messageId"] != ack["messageId"]:
            raise Failure(f"seq {seq}: tab B's messageId {got['messageId']} is not the ack's {ack['messageId']}")
        # The concierge answers every guest message; nothing else writes here, so its reply is next.
        reply = seq + 1
        await wait_until(lambda: reply in a.shown and reply in b.shown, WAIT,
                         f"the butler's reply to {cmid} (seq {reply}) did not reach both tabs "
                         f"(tab A: {reply in a.shown}, tab B: {reply in b.shown})")
        for tab in (a, b):
            if tab.shown[reply]["role"] != "assistant":
                raise Failure(f"tab {tab.name}: seq {reply} is {tab.shown[reply]}, expected the butler's reply")
        if a.shown[reply]["messageId"] != b.shown[reply]["messageId"]:
            raise Failure(f"seq {reply}: the tabs show different messages")
        took = time.monotonic() - started
        self.rounds.append((phase, cmid, seq, took))
        note = f", resent {resends}x" if resends else ""
        print(f"  [{phase}] {cmid} {content!r}: ack seq {seq}; butler (seq {reply}) on both tabs in {took:.2f}s{note}"
              f" -- {a.shown[reply]['content'][:60]!r}", flush=True)
        self.check()
        return seq

    def check(self):
        problems = self.a.problems + self.b.problems
        if problems:
            raise Failure("; ".join(problems))

    async def attachment(self, i):
        """A photo on the presigned URL, sent, seen by tab B and downloaded byte for byte."""
        a, b = self.a, self.b
        png = png_1x1()
        base = self.args.edge_a.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        status, body = http("POST", f"{base}/chat/upload-url",
                            json.dumps({"filename": "dot.png", "contentType": "image/png", "size": len(png)}).encode(),
                            {"Authorization": f"Bearer {a.identity['visitorToken']}", "Content-Type": "application/json"})
        if status != 200:
            raise Failure(f"POST /chat/upload-url: HTTP {status} {body[:300]!r}")
        grant = json.loads(body)
        status, body = http("PUT", grant["uploadUrl"], png, {"Content-Type": "image/png"})
        if status not in (200, 204):
            raise Failure(f"PUT on the presigned upload URL {grant['uploadUrl'].split('?')[0]}: HTTP {status} {body[:300]!r}")
        seq = await self.round("attachment", i, "a photo", [{"id": grant["attachmentId"]}])
        files = b.shown[seq]["attachments"]
        if len(files) != 1 or files[0]["id"] != grant["attachmentId"] or not files[0].get("url"):
            raise Failure(f"tab B's message {seq} carries attachments {files}")
        status, body = http("GET", files[0]["url"])
        if status != 200 or body != png:
            raise Failure(f"downloading the attachment from {files[0]['url'].split('?')[0]}: HTTP {status}, "
                          f"{len(body)} bytes (sent {len(png)})")
        print(f"  [attachment] uploaded to {grant['uploadUrl'].split('?')[0]}, tab B downloaded the same {len(png)} bytes "
              f"from {files[0]['url'].split('?')[0]}", flush=True)

    async def main(self):
        args = self.args
        visitor = "vis_" + secrets.token_hex(16)
        self.a = a = Tab("A", args.edge_a, args.hotel)
        self.b = b = Tab("B", args.edge_b, args.hotel)
        try:
            ida = await a.open({"visitorId": visitor, "name": "Compose Test"})
            print(f"  tab A ({args.edge_a}): identified {ida['visitorId']}, conversation {ida['conversationId']}", flush=True)
            idb = await b.open({"visitorId": ida["visitorId"], "visitorToken": ida["visitorToken"],
                                "resumeConversation": True, "lastSeq": 0})
            if (idb["guestId"], idb["conversationId"]) != (ida["guestId"], ida["conversationId"]):
                raise Failure(f"tab B resumed another guest or conversation: {idb} vs {ida}")
            print(f"  tab B ({args.edge_b}): resumed the same visitor and conversation", flush=True)

            texts = ["hi", "I need extra towels", "Can I order room service?", "Any restaurants nearby?"]
            n = 0
            for _ in range(args.rounds):
                n += 1
                await self.round("before", n, texts[(n - 1) % len(texts)] if n <= len(texts) else f"message {n} from compose-test")
            if args.attachment:
                n += 1
                await self.attachment(n)
            if args.between:
                print(f"  running: {args.between}", flush=True)
                done = subprocess.run(args.between, shell=True)
                if done.returncode != 0:
                    raise Failure(f"{args.between!r} exited {done.returncode}")
                for _ in range(args.rounds):
                    n += 1
                    await self.round("after", n, f"message {n} from compose-test, after the failure")

            # Anything late (a duplicate a replica sends again) has a moment to show up.
            await asyncio.sleep(args.quiet)
            self.check()
            total = a.high()
            for tab in (a, b):
                if tab.order != list(range(1, total + 1)):
                    raise Failure(f"tab {tab.name} showed seqs {tab.order}, expected 1..{total}")
            for seq in range(1, total + 1):
                if a.shown[seq]["messageId"] != b.shown[seq]["messageId"]:
                    raise Failure(f"seq {seq}: tab A shows {a.shown[seq]['messageId']}, tab B {b.shown[seq]['messageId']}")

            # A third tab gets the whole conversation back as history.
            c = Tab("C", args.edge_a, args.hotel)
            try:
                await c.open({**a.identity, "lastSeq": 0})
                if c.order != list(range(1, total + 1)) or c.problems:
                    raise Failure(f"tab C's history has seqs {c.order} {c.problems}, expected 1..{total}")
                for seq in range(1, total + 1):
                    if c.shown[seq]["messageId"] != a.shown[seq]["messageId"]:
                        raise Failure(f"history seq {seq} is {c.shown[seq]['messageId']}, the tabs showed {a.shown[seq]['messageId']}")
                    if c.shown[seq]["role"] == "guest" and self.sent.get(c.shown[seq]["clientMessageId"]) != c.shown[seq]["content"]:
                        raise Failure(f"history seq {seq} is {c.shown[seq]}, not what was sent")
            finally:
                await c.close()

            retryable = [e["code"] for t in (a, b) for e in t.errors]
            after = [r[3] for r in self.rounds if r[0] == "after"]
            guests = sum(1 for s in a.shown.values() if s["role"] == "guest")
            print(f"chat: ok -- {total} messages ({guests} guest, {total - guests} butler) shown once each, in seq order, "
                  f"on both tabs; history on a third tab matches; reconnects A={a.reconnects} B={b.reconnects}; "
                  f"retryable errors {retryable or 'none'}"
                  + (f"; after the kill, slowest round {max(after):.2f}s" if after else ""), flush=True)
            return 0
        except Failure as err:
            print(f"chat: FAILED -- {err}", flush=True)
            for tab in (a, b):
                print(f"  tab {tab.name}: seqs {tab.order}; errors {tab.errors}; problems {tab.problems}", flush=True)
            return 1
        finally:
            await a.close()
            await b.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edge-a", default="ws://127.0.0.1:3001", help="the first edge (tab A)")
    parser.add_argument("--edge-b", default="ws://127.0.0.1:3002", help="the second edge (tab B)")
    parser.add_argument("--hotel", default="demo_hotel", help="hotelId (the demo page's)")
    parser.add_argument("--rounds", type=int, default=5, help="guest messages before and after --between")
    parser.add_argument("--between", help="a shell command run between the two phases (the failure to survive)")
    parser.add_argument("--attachment", action="store_true", help="also upload and send a photo")
    parser.add_argument("--quiet", type=float, default=2.0, help="seconds to watch for late duplicates at the end")
    args = parser.parse_args()
    sys.exit(asyncio.run(Chat(args).main()))


if __name__ == "__main__":
    main()
