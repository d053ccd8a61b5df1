"""Run identity: a record is reused only while everything that determines its result is unchanged."""
from kdbench import distributed, store


def identity(cell, seed, registry, teacher_sha256, device_type, threads):
    """What determines a run's result: its config and seed, the checkpoint of the teacher it uses
    (sha256; None without one), the fingerprints of the plugins that supply its components, and
    where it runs: the device type and, on CPU, the intra-op thread count (float sums depend on it;
    ``threads`` is the executor's count per cell, used when the cell leaves train.threads at 0)."""
    from kdbench.spec import config_hash

    threads = cell.config["train"]["threads"] or threads
    processes = distributed.world_size()  # DDP processes sharing each global batch
    return {
        "config": config_hash(cell.config), "seed": seed, "teacher": teacher_sha256,
        "plugins": {name: info["fingerprint"] for name, info in cell_plugins(cell, registry).items()},
        "device": device_type, "threads": threads if device_type == "cpu" else None,
    } | ({"processes": processes} if processes > 1 else {})


def cell_plugins(cell, registry):
    """The plugins whose code a cell runs: the built-ins (the engine) and those that supply its
    method, student model, dataset and (for methods that use one) teacher model. Models a method
    builds for itself (its generators) come from its own plugin in practice, so its fingerprint
    covers them."""
    from kdbench.plugins import BUILTIN

    config = cell.config
    names = {BUILTIN, registry.plugin_of("methods", cell.method), registry.plugin_of("datasets", config["data"]["name"]),
             registry.model_plugin("students", config["student"]["model"])}
    if registry.get("methods", cell.method).needs_teacher:
        names.add(registry.model_plugin("teachers", config["teacher"]["model"]))
    return {name: registry.plugins[name] for name in sorted(names) if name in registry.plugins}


def stale_reason(recorded, expected):
    """Why a finished record no longer stands for this run ("; "-joined), or None."""
    if not recorded:
        return "recorded before kdbench tracked run identity"
    from kdbench.plugins import BUILTIN

    reasons = []
    if (recorded.get("config"), recorded.get("seed")) != (expected["config"], expected["seed"]):
        reasons.append("config changed")
    if recorded.get("teacher") != expected["teacher"]:
        reasons.append("teacher changed")
    if (recorded.get("device"), recorded.get("threads")) != (expected["device"], expected["threads"]):
        reasons.append("device or thread count changed")
    if recorded.get("processes", 1) != expected.get("processes", 1):
        reasons.append("number of DDP processes changed")
    old, new = recorded.get("plugins", {}), expected["plugins"]
    for name in sorted(set(old) | set(new)):
        if old.get(name) == new.get(name):
            continue
        if name == BUILTIN:
            reasons.append("kdbench code changed")
        elif name not in old:
            reasons.append(f"plugin {name!r} now supplies a component")
        elif name not in new:
            reasons.append(f"plugin {name!r} no longer supplies a component")
        else:
            reasons.append(f"plugin {name!r} code changed")
    return "; ".join(reasons) or None


def finished_record(job, log=print):
    """The job's finished ("ok") record of the same identity, else None; an unreadable one is
    never trusted."""
    try:
        record = store.load_record(job.folder)
    except store.UnreadableRecord as exc:
        log(f"kdbench: record {exc}; running it again")
        return None
    if record is None or record["status"] != "ok":
        return None
    if job.identity is not None and stale_reason(record.get("identity"), job.identity):
        return None  # not this run any more: it is done again
    return record
