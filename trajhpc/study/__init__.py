"""What a study is: a manifest validated line by line (its container fields and declared
comparisons included), expanded into the grid of jobs; `trajhpc data inspect`."""

from trajhpc.core.exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "manifest": ["Manifest", "load_manifest", "parse_manifest"],
    "grid": ["GridJob", "expand"],
    "comparison": ["Analysis", "Primary", "Secondary"],
    "inspect": ["inspect_command"],
})
