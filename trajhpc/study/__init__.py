"""What a study is: a manifest validated line by line (container fields, comparisons, `--set`
overrides), expanded into the grid of jobs; `trajhpc data inspect` and `trajhpc diff`."""

from trajhpc.core.exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "manifest": ["Manifest", "load_manifest", "parse_manifest"],
    "grid": ["GridJob", "expand"],
    "comparison": ["Analysis", "Primary", "Secondary"],
    "inspect": ["inspect_command"],
    "overrides": ["Override", "apply_overrides", "parse_overrides"],
    "diff": ["Difference", "GridDiff", "diff_grids", "diff_mappings", "flatten"],
    "diffcmd": ["diff_command"],
})
