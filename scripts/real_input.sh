#!/usr/bin/env bash
# Runs `shelftally scan` on real photos: Grocery Store val pictures from ../shared/data, with the
# models given (default: the shipped classifier and the product-agnostic detector of the README).
#
#   ./scripts/real_input.sh [DETECTOR_DIR] [CLASSIFIER_DIR] [PICTURES_PER_CLASS] [SHELVES]
#
# It builds work/real-input/shelftally.db with the 81 Grocery Store products as SKUs and one shelf
# per coarse class (Apple, Milk, Juice, ...), books one unit of each fine class on its coarse
# shelf, scans PICTURES_PER_CLASS (default 1) val pictures of the first classes of each shelf at
# their shelf, and prints per picture the SKUs counted and the discrepancy report. Nothing is
# written outside work/real-input/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DATA="${SHELFTALLY_GROCERY:-../shared/data/grocerystore}"
DETECTOR="${1:-models/product-agnostic}"
CLASSIFIER="${2:-models/classifier-grocery}"
PER_CLASS="${3:-1}"
SHELVES="${4:-6}"
OUT=work/real-input
BIN=.venv/bin
rm -rf "$OUT" && mkdir -p "$OUT"
export SHELFTALLY_DATABASE_URL="sqlite:///$OUT/shelftally.db"
export SHELFTALLY_SCAN__EVIDENCE_DIR="$OUT/evidence"
"$BIN/shelftally" db upgrade
# The master data and the book, from the dataset's own class table.
"$BIN/python" - "$DATA" "$OUT" "$PER_CLASS" "$SHELVES" <<'PY'
import csv, sys
from pathlib import Path
from classifier.dataset import read_grocery_classes, read_grocery_store
data, out, per_class, shelves = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
classes = read_grocery_classes(data)
shelf = {c.name: f"STORE-{c.coarse_name.upper()}" for c in classes}
with open(out / "skus.csv", "w", newline="") as f:
    w = csv.writer(f); w.writerow(["sku_code", "name"]); w.writerows((c.name, c.name.replace("-", " ")) for c in classes)
with open(out / "locations.csv", "w", newline="") as f:
    w = csv.writer(f); w.writerow(["location_code", "level", "parent_code"]); w.writerow(["STORE", "warehouse", ""])
    w.writerows((code, "shelf", "STORE") for code in sorted(set(shelf.values())))
with open(out / "stock.csv", "w", newline="") as f:
    w = csv.writer(f); w.writerow(["location_code", "sku_code", "quantity"]); w.writerows((shelf[c.name], c.name, 1) for c in classes)
val = read_grocery_store(data, "val")
chosen: dict[str, list[str]] = {}  # shelf -> its first two fine classes
for c in classes:
    if shelf[c.name] not in chosen and len(chosen) == shelves:
        continue
    if len(chosen.setdefault(shelf[c.name], [])) < 2:
        chosen[shelf[c.name]].append(c.name)
wanted = {name for names in chosen.values() for name in names}
taken: dict[str, int] = {}
with open(out / "pictures.txt", "w") as f:
    for item in val.items:
        name = val.class_names[item.class_index]
        if name in wanted and taken.get(name, 0) < per_class:
            taken[name] = taken.get(name, 0) + 1
            f.write(f"{shelf[name]}\t{item.path}\n")
PY
for kind in skus locations stock; do "$BIN/shelftally" import "$kind" "$OUT/$kind.csv" > /dev/null; done
status=0
for shelf in $(cut -f1 "$OUT/pictures.txt" | sort -u); do
  mapfile -t pictures < <(awk -F'\t' -v s="$shelf" '$1 == s {print $2}' "$OUT/pictures.txt")
  echo "== $shelf: ${#pictures[@]} picture(s)"
  "$BIN/shelftally" scan "${pictures[@]}" --location "$shelf" --detector "$DETECTOR" --classifier "$CLASSIFIER" || status=$?
done
"$BIN/shelftally" discrepancies
echo "evidence images: $OUT/evidence"
exit $status
