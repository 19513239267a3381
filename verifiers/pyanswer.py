"""The answer's side of a relayed test run; runs INSIDE its own sandbox (stdlib only).

``python3 pyanswer.py answer.json ID_BASE``: executes the task's prelude and the candidate's
code (object references it hands out are numbered from ID_BASE), says
``["ready"]`` (or ``["failed", reason]``), then serves requests from the relay, one JSON line
each (:mod:`verifiers.plain` encoding): ``resolve`` names, ``call`` a global or an object,
``getattr``, ``setattr``. Every reply is ``["ok", seq, value]`` or ``["raise", seq, type, text]``.

Nothing this process says is trusted: the relay outside decodes each reply strictly, and the
tests run in another process that holds none of this code. This side only has to serve honest
answers well: results that are not plain data (an object, a generator, an int subclass) become
references, which the tests can call or pass back but never compare equal to a plain value.
Each call runs under an alarm so that a slow answer fails one test instead of the whole run.
Like the tests' harness, this imports only modules that start fast (no ``json``, ``signal``).
"""

import _signal
import builtins
import posix
import sys

if __name__ == "__main__":  # in the sandbox: the copy written into the box beside this file
    sys.path.insert(0, __file__.rpartition("/")[0])
    import plain
else:
    from flopnet.verifiers import plain  # type: ignore[no-redef]


class _Alarm(BaseException):
    """A call ran past its time limit."""


class Server:
    """The candidate's namespace, and the objects it has handed out by reference."""

    def __init__(self, ns, id_base):
        self.ns = ns
        self.objects = {}
        self.ids = {}
        self.next_id = id_base

    def ref_of(self, obj):
        key = id(obj)
        if key not in self.ids:
            self.ids[key] = self.next_id
            self.objects[self.next_id] = obj  # kept alive, so id() stays unique
            self.next_id += 1
        return plain.Ref(self.ids[key])

    def value(self, obj):
        """Plain data if the whole value is plain, else one reference to it."""
        try:
            return plain.encode(obj, loose=True)
        except plain.PlainError:
            return plain.encode(self.ref_of(obj))

    def deref(self, ref):
        if isinstance(ref.key, int):
            if ref.key not in self.objects:
                raise LookupError("unknown object reference")
            return self.objects[ref.key]
        if ref.key not in self.ns:
            raise NameError(ref.key)
        return self.ns[ref.key]

    def resolve(self, names):
        """Encoded {name: value}: plain globals by value, anything else by name (so that a
        restarted server still has it)."""
        found = []
        for name in names:
            if name in self.ns and not name.startswith("__"):
                try:
                    value = plain.encode(self.ns[name], loose=True)
                except plain.PlainError:
                    value = plain.encode(plain.Ref(name))
                found.append([name, value])
        return {"d": found}

    def handle(self, msg):
        op, seq = msg[0], msg[1]
        if op == "resolve":
            return seq, self.resolve(msg[2])
        target = plain.decode(msg[2], self.deref)
        if op == "call":
            args = plain.decode(msg[3], self.deref)
            kwargs = {k: plain.decode(v, self.deref) for k, v in msg[4]}
            return seq, self.value(target(*args, **kwargs))
        if op == "getattr":
            return seq, self.value(getattr(target, msg[3]))
        if op == "setattr":
            setattr(target, msg[3], plain.decode(msg[4], self.deref))
            return seq, None
        if op == "iter":  # a generator, a map: its items, as one list
            return seq, self.value(list(target))
        if op == "len":
            return seq, self.value(len(target))
        if op == "getitem":
            return seq, self.value(target[plain.decode(msg[3], self.deref)])
        raise ValueError("unknown request " + repr(op))


def _reason(exc):
    return (type(exc).__name__, str(exc)[:500])


def _alarm(seconds):
    _signal.setitimer(_signal.ITIMER_REAL, seconds)


def main():
    with open(sys.argv[1], encoding="utf-8") as fh:
        job = plain.load_light(fh.read())
    sys.path.extend(job.get("path", ()))
    # The channel is a private copy of stdin/stdout; the answer's own prints and reads go nowhere.
    # Open for the life of the process (it ends with _exit, not by leaving a block).
    inp = open(posix.dup(0), "rb")  # noqa: SIM115
    out = open(posix.dup(1), "wb")  # noqa: SIM115
    devnull = posix.open("/dev/null", posix.O_RDWR)
    posix.dup2(devnull, 0)
    posix.dup2(devnull, 1)

    def send(msg):
        out.write(plain.dump_light(msg))
        out.flush()

    def on_alarm(signum, frame):
        raise _Alarm()

    _signal.signal(_signal.SIGALRM, on_alarm)
    timeout = float(job.get("timeout", 5.0))
    ns = {"__name__": "solution", "__builtins__": builtins}
    try:
        _alarm(timeout)
        exec(compile(job.get("prelude") or "", "prelude.py", "exec"), ns)
        exec(compile(job["code"], "solution.py", "exec"), ns)
        _alarm(0)
    except BaseException as exc:
        _alarm(0)
        kind = "timeout" if isinstance(exc, _Alarm) else "{}: {}".format(*_reason(exc))
        send(["failed", "the solution raised " + kind])
        posix._exit(0)
    server = Server(ns, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    send(["ready"])
    for line in inp:
        try:
            msg = plain.load_light(line.decode("utf-8"))
            seq = msg[1]
        except (plain.PlainError, IndexError, TypeError, KeyError, UnicodeDecodeError):
            posix._exit(3)  # the relay never sends this; nothing sensible to answer
        try:
            _alarm(timeout)
            seq, value = server.handle(msg)
            _alarm(0)
            reply = ["ok", seq, value]
        except BaseException as exc:
            _alarm(0)
            name, text = ("AnswerTimeout", "timeout") if isinstance(exc, _Alarm) else _reason(exc)
            reply = ["raise", seq, name, text]
        try:
            send(reply)
        except plain.PlainError as exc:
            send(["raise", seq, "AnswerError", str(exc)])
    posix._exit(0)


if __name__ == "__main__":
    main()
