"""File formats and process plumbing shared by every floor: atomic files and folders, strict
JSON, images, sample folders and ``torchrun`` set-up. Imports nothing else of relaydiff."""
