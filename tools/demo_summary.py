"""Print what `make demo`'s follow-mode stages did while the simulated market ran."""

import json
import sys


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


features, train, predict = (load(path) for path in sys.argv[1:4])
m = train["metrics"]
p = predict["models"]["linear"]
print(
    f"while the market ran: features --follow emitted {features['bars_emitted']} bars and "
    f"{features['examples_emitted']} examples ({features['late_ticks']} late ticks); train --follow learned "
    f"{train['learned_this_run']} more examples, now at checkpoint v{train['version']} "
    f"(rolling MAE {m['mae']:.5f}, hit rate {m['hit_rate']:.2f}); predict --follow made "
    f"{p['predicted_this_run']} predictions with model versions {', '.join(map(str, p['versions_served']))}"
)
