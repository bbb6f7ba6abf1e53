"""Moving a source's disks into images: `copy` (everything, resumable) and `sync` (the delta
against a finished copy), on one journal, manifest and device probe."""
