"""The coordinator's Flower ServerApp: one campaign, phase by phase.

``main``, the phase table (``PHASES``) and ``send``. The phases are plain
functions over a ``CampaignState`` (``coordinator.campaign``, state in
``coordinator.state``); their learning is in ``coordinator.phases`` and
``coordinator.aggregation``. ``send`` is Flower's ``send_and_receive``, or its
push and pull with each reply handed over as it arrives (``exchange_each``,
pretraining and fine-tuning), never waiting longer than ``round-timeout``
(discovery waits ``discovery-timeout``).
A node that errs or does not answer in time is recorded as missing (with the
phase and round) and left out while it stays away; the campaign goes on with
the others. A missing node that is connected again (its SuperNode restarted)
takes part from the next round or phase on (``campaign.rejoin``).

Signing key: bundles are signed with Ed25519. The coordinator's private key
is read from a 0600 file named by ``signing-key-file`` in the run config or by
``EDGEBIND_SIGNING_KEY_FILE`` (a simulation may give ``signing-key`` hex
instead; see ``phases.signing_key``);
deployed nodes are provisioned with its public key (``edgebind-node up
--signing-public-key``) and accept no key in-band. Without a configured key the
campaign makes one of its own and offers its *public* key with the encoders:
only simulated nodes take it (they share the simulation's trust); deployed
nodes then refuse every bundle as signed by an unknown key. The fleet
simulator puts a fresh key in the run config of every campaign.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from common.config import CampaignConfig
from common.files import write_json
from common.processes import ensure_logging
from coordinator import campaign
from coordinator.state import CampaignState
from coordinator.store import open_store

log = logging.getLogger("edgebind.campaign")

app = ServerApp()

PHASES: tuple[tuple[str, Callable[[CampaignState], dict]], ...] = (
    ("discover", campaign.discover), ("manifest", campaign.manifest), ("pretrain", campaign.pretrain), ("collect", campaign.collect),
    ("bind", campaign.bind), ("grow", campaign.grow), ("head", campaign.head), ("finetune", campaign.finetune),
    ("push", campaign.push), ("evaluate", campaign.evaluate),
)  # fmt: skip


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one campaign with the run config's settings; results go to ``results-path`` and the store."""
    ensure_logging()
    cfg = CampaignConfig.from_run_config(context.run_config)
    st = CampaignState.start(cfg, context.run_id, send=lambda *a, **kw: send(grid, st, *a, **kw), node_ids=lambda: list(grid.get_node_ids()), grid=grid)
    run(st)


def run(st: CampaignState) -> dict:
    """Every phase in order, the state and a report in the store after each; the results file whatever happens."""
    cfg = st.cfg
    st.results_path.parent.mkdir(parents=True, exist_ok=True)
    st.store = open_store(cfg.store or st.results_path.parent / "coordinator.db")
    if cfg.resume:
        if st.store.campaign(st.campaign_id) is None:
            raise ValueError(f"resume: no campaign {st.campaign_id!r} in the store to resume (give its campaign-id and store)")
        st.done_before = dict((st.store.report(st.campaign_id) or {}).get("phases", {}))
        log.info("campaign %s: resuming; finished before: %s", st.campaign_id, ", ".join(sorted(st.done_before)) or "nothing")
    st.store.create_campaign(st.campaign_id, st.results["config"])  # a resumed campaign must have the same settings
    log.info("campaign %s: %s on %s, seed %d%s; signing key %s (%s)", st.campaign_id, cfg.scenario, cfg.dataset,
             cfg.seed, " [quick]" if cfg.quick else "", st.key_id, st.key_source)  # fmt: skip
    t0, threads = time.time(), torch.get_num_threads()
    if cfg.coordinator_threads > 0:
        torch.set_num_threads(cfg.coordinator_threads)
    try:
        for name, step in PHASES:
            _phase(st, name, step)
        st.results["state"] = "done"
        st.store.set_campaign_state(st.campaign_id, "done")
    except Exception as e:
        st.results["state"] = "failed"
        st.results["error"] = f"{type(e).__name__}: {e}"
        st.store.set_campaign_state(st.campaign_id, "failed", st.results["error"][:2000])
        log.error("campaign %s failed: %s", st.campaign_id, st.results["error"])
        raise
    finally:
        torch.set_num_threads(threads)
        st.results.update(seconds=time.time() - t0, missing=st.missing, missing_nodes=sorted(st.missing), rejoined=st.rejoined, refused=st.refused, bad_replies=st.bad_replies)
        write_json(st.results_path, st.results)
        _save_report(st)
        st.store.close()
    log.info("campaign %s done in %.1fs; results in %s", st.campaign_id, st.results["seconds"], st.results_path)
    return st.results


def _phase(st: CampaignState, name: str, step: Callable[[CampaignState], dict]) -> None:
    st.store.set_campaign_state(st.campaign_id, name)
    log.info("[%s] ...", name)
    t = time.time()
    st.node_compute = 0.0
    figures = step(st) or {}
    figures["seconds"] = round(time.time() - t, 3)
    figures["node_compute_seconds"] = round(st.node_compute, 3)  # summed over nodes: work, not orchestration
    figures["process_peak_mib"] = process_peak_mib()  # the coordinator process's peak so far (a simulation's: the driver's)
    st.results["phases"][name] = figures
    log.info("[%s] done in %.1fs %s", name, figures["seconds"], _brief(figures))
    _save_report(st, name)


def process_peak_mib() -> float:
    """This process's peak resident memory so far, in MiB: it only rises, so the phase where it rose is the one to look at."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _save_report(st: CampaignState, phase: str = "") -> None:
    """What ``edgebind-coordinator status`` shows of this campaign, saved after every phase; never fails the campaign."""
    try:
        st.store.save_report(st.campaign_id, st.report(phase))
    except ValueError as e:
        log.warning("campaign %s: its report could not be saved: %s", st.campaign_id, e)


def send(
    grid: Grid, st: CampaignState, phase: str, kind: str, contents: dict[int, RecordDict], rnd: int = 0, timeout: float | None = None,
    record: bool = True, on_reply: Callable[[int, Message], None] | None = None,
) -> dict[int, Message | None]:
    """One exchange; nodes that fail are recorded missing, nodes that refuse are logged; the rest's replies, by node.

    ``timeout`` defaults to ``round-timeout``. With ``record=False`` (asking
    nodes whether they are back, ``campaign.rejoin``) a node that fails or
    refuses is passed over without a word: it is already on the books. With
    ``on_reply``, each good reply is handed to it as it arrives and not kept
    (the values returned are None): a round's memory is then one reply, not
    the fleet's (``exchange_each``).
    """
    timeout = st.cfg.round_timeout if timeout is None else timeout
    ttl = timeout + 60
    msgs = {f: Message(c, dst_node_id=f, message_type=kind, group_id=f"{phase}-{rnd}", ttl=ttl) for f, c in contents.items()}
    ok: dict[int, Message | None] = {}

    def take(f: int, r: Message) -> None:
        if "error" in r.content.config_records:
            if record:
                reason = str(r.content["error"]["reason"])
                st.refused.append({"node": st.who(f), "phase": phase, "round": rnd, "reason": reason})
                log.warning("[%s] node %s refused the message: %s", phase, st.who(f), reason)
            return
        if "timing" in r.content.metric_records:
            st.node_compute += float(r.content["timing"]["compute-seconds"])
        if on_reply is None:
            ok[f] = r
        else:
            on_reply(f, r)
            ok[f] = None

    if on_reply is None:
        replies, missing = exchange(grid, msgs, timeout)
        for f, r in replies.items():
            take(f, r)
    else:
        missing = exchange_each(grid, msgs, timeout, take)
    if record:
        for f, reason in missing.items():
            st.missing[st.who(f)] = {"phase": phase, "round": rnd, "reason": reason}
            log.warning("[%s] node %s is missing: %s", phase, st.who(f), reason)
    return ok


def exchange(grid: Grid, messages: dict[int, Message], timeout: float) -> tuple[dict[int, Message], dict[int, str]]:
    """Send one message per node with Flower's ``send_and_receive`` and wait at most ``timeout`` seconds.

    Returns the replies that carry content, by node, and for every other node
    why it is missing (a Flower error, or no reply in time).
    """
    if not messages:
        return {}, {}
    replies: dict[int, Message] = {}
    missing: dict[int, str] = {}
    for r in grid.send_and_receive(list(messages.values()), timeout=timeout):
        node = r.metadata.src_node_id
        if node not in messages:
            continue
        if r.has_error():
            missing[node] = f"error {r.error.code}: {_first_line(r.error.reason)}"
        else:
            replies[node] = r
    for node in messages:
        if node not in replies and node not in missing:
            missing[node] = f"no reply within {timeout:g}s"
    return replies, missing


def exchange_each(grid: Grid, messages: dict[int, Message], timeout: float, on_reply: Callable[[int, Message], None], every: float = 0.5) -> dict[int, str]:
    """Push one message per node, then hand each reply to ``on_reply`` as it is pulled, for at most ``timeout`` seconds.

    Flower's ``send_and_receive`` returns a round's replies together; pulled
    here as they arrive, each reply can be used and dropped at once. Replies
    are pulled at least once after the push. Returns why each other node is
    missing (a Flower error, no reply in time, or a message the SuperLink
    would not take).
    """
    if not messages:
        return {}
    deadline = time.monotonic() + timeout
    pushed = {str(i) for i in grid.push_messages(list(messages.values())) if i}
    node_of: dict[str, int] = {}
    missing: dict[int, str] = {}
    for node, m in messages.items():  # by the message's own id, not by position: a refused message leaves no gap to misalign
        if m.metadata.message_id in pushed:
            node_of[m.metadata.message_id] = node
        else:
            missing[node] = "the SuperLink did not take the message"
    while node_of:
        got = 0
        for r in grid.pull_messages(list(node_of)):
            node = node_of.pop(r.metadata.reply_to_message_id, None)
            if node is None:
                continue
            got += 1
            if r.has_error():
                missing[node] = f"error {r.error.code}: {_first_line(r.error.reason)}"
            else:
                on_reply(node, r)
        if not node_of or time.monotonic() >= deadline:
            break
        if not got:  # nothing new: wait a little before asking again
            time.sleep(min(every, max(0.0, deadline - time.monotonic())))
    for node in node_of.values():
        missing[node] = f"no reply within {timeout:g}s"
    return missing


def _first_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if "Exception" in ln or "Error" in ln), lines[-1] if lines else "")
    return last[:limit]


def _brief(figures: dict) -> str:
    parts = [f"{k}={v}" for k, v in figures.items() if k != "seconds" and isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return "(" + ", ".join(parts) + ")" if parts else ""
