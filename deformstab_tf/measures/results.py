"""`MeasureResult`: the one result type every measure returns."""

import collections.abc
import json
import math


class MeasureResult(collections.abc.Mapping):
    """Per-probe-point values of one measure: a read-only mapping `probe name -> float`.

    Keys are in forward order (the order of the probe points in the network). A measure with
    several components per probe point maps each name to its headline value and keeps the other
    components in `details` (relative stability: `R = D / G` per name, `details["D"]`,
    `details["G"]`).

    Args:
        measure: name of the measure, e.g. `"sensitivity"`.
        values: mapping `probe name -> float`, in forward order.
        details: optional mapping `component -> {probe name -> float}`.
        metadata: optional JSON-serialisable mapping describing how the values were obtained
            (number of probe images, batch size, reduction, seed, skipped layers, ...).

    Example:

    >>> result = MeasureResult("sensitivity", {"input": 0.31, "block1_conv1": 0.42})
    >>> result["block1_conv1"]
    0.42
    >>> print(result)  # an aligned table
    probe         sensitivity
    ------------  -----------
    input                0.31
    block1_conv1         0.42
    >>> import json
    >>> json.loads(result.to_json())["values"]
    {'input': 0.31, 'block1_conv1': 0.42}
    """

    def __init__(self, measure, values, details=None, metadata=None):
        self.measure = str(measure)
        self._values = {str(name): float(value) for name, value in values.items()}
        self.details = {
            str(component): {str(name): float(v) for name, v in component_values.items()}
            for component, component_values in (details or {}).items()
        }
        self.metadata = dict(metadata or {})

    def __getitem__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(
                f"No probe point {name!r} in this {self.measure} result. "
                f"Available: {list(self._values)}"
            ) from None

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def mean(self):
        """Arithmetic mean over probe points of the finite values; NaN if there are none, or if
        any value is NaN (a diverged probe point: a mean over the others would read as a
        result)."""
        if any(math.isnan(v) for v in self._values.values()):
            return math.nan
        finite = [v for v in self._values.values() if math.isfinite(v)]
        return sum(finite) / len(finite) if finite else math.nan

    def to_dict(self):
        """A JSON-serialisable dict: `measure`, `values`, `details`, `metadata`."""
        return {
            "measure": self.measure,
            "values": dict(self._values),
            "details": {component: dict(v) for component, v in self.details.items()},
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, config):
        """Inverse of `to_dict`."""
        return cls(
            config["measure"],
            config["values"],
            details=config.get("details"),
            metadata=config.get("metadata"),
        )

    def to_json(self, **kwargs):
        """`to_dict()` as a JSON string; keyword arguments go to `json.dumps`."""
        return json.dumps(self.to_dict(), **kwargs)

    def __eq__(self, other):
        if not isinstance(other, MeasureResult):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None

    def table(self):
        """The values (and the components in `details`) as an aligned text table."""
        columns = [self.measure, *self.details]
        rows = [["probe"] + columns]
        for name, value in self._values.items():
            cells = [_format(value)]
            cells += [_format(self.details[c].get(name, math.nan)) for c in columns[1:]]
            rows.append([name] + cells)
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * width for width in widths))
        skipped = self.metadata.get("skipped")
        if skipped:
            lines.append("skipped: " + ", ".join(f"{k} ({v})" for k, v in skipped.items()))
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def __repr__(self):
        values = ", ".join(f"{name!r}: {_format(v)}" for name, v in self._values.items())
        return f"MeasureResult({self.measure!r}, {{{values}}})"

    def _repr_pretty_(self, printer, cycle):
        # IPython / Jupyter display the table.
        printer.text(repr(self) if cycle else self.table())


def _format(value):
    return f"{value:.6g}"
