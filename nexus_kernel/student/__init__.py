"""The student: model, building it from architecture.json, its weights, decoding, the bundle and packaging."""
