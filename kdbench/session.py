"""A Session: what one process needs to run jobs, built once per process from a picklable
SessionSpec, in the driver and in every worker (a spawned process, a Ray task, a DDP rank): the
plugin registry, the device, the data loaded and the teacher caches. Nothing of it is cached at module level, so
two sessions (two runs in one process, a test) never share a registry or a loaded teacher."""
import dataclasses


@dataclasses.dataclass(frozen=True)
class SessionSpec:
    plugin_dirs: tuple = ()
    strict_plugins: bool = False
    cache: str = ""  # the teacher cache folder; "" -> $KDBENCH_CACHE or ~/.cache/kdbench
    device: str = "auto"


class Session:
    def __init__(self, spec):
        from kdbench.engine import DataCache, resolve_device
        from kdbench.plugins import load_registry

        self.spec = spec
        self.registry = load_registry([str(d) for d in spec.plugin_dirs], strict=spec.strict_plugins or None)
        self.device = resolve_device(spec.device)
        self.data = DataCache(self.registry)
        self.teacher_caches = {}

    def teacher_cache(self, stores=()):
        """The teacher cache, searching the shipped teacher folders ``stores`` first."""
        from kdbench.teachers import TeacherCache, default_cache_dir

        stores = tuple(str(s) for s in stores)
        if stores not in self.teacher_caches:
            self.teacher_caches[stores] = TeacherCache(self.spec.cache or default_cache_dir(), self.registry, self.device, stores=stores,
                                                       data=self.data)
        return self.teacher_caches[stores]
