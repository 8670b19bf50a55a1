"""TensorBoard event files: purging steps a resumed run redoes, and the custom-scalars layout.

A run killed in the middle of an epoch has already written some summaries of that epoch; the
rerun writes them again. `purge_events` rewrites a run's event files without those steps, so every
epoch appears exactly once, whichever TensorBoard backend reads the files.
"""

import glob
import os

import tensorflow as tf
from tensorboard.compat.proto import event_pb2

EVENT_FILE_PATTERN = "events.out.tfevents.*"


def purge_events(directory, from_step, tag_prefixes=None):
    """Removes every summary with `step >= from_step` from the event files in `directory`.

    Event files are rewritten atomically (a new file, then `os.replace`); other records (file
    version, graphs without a step) are kept. A record cut off by a killed writer ends the file:
    what follows it cannot be read and is dropped. Subdirectories (other runs) are not touched.

    Args:
        directory: a TensorBoard run directory (e.g. `log_dir/train`); missing is fine.
        from_step: the first step to remove.
        tag_prefixes: only remove summaries whose tags start with one of these (e.g.
            `("epoch_",)` for Keras's epoch scalars); `None` removes all.

    Returns:
        The number of summaries removed.

    Example:

    >>> with tf.summary.create_file_writer("runs/vgg/train").as_default():
    ...     for epoch in range(5):
    ...         _ = tf.summary.scalar("epoch_loss", 1.0 / (epoch + 1), step=epoch)
    >>> purge_events("runs/vgg/train", from_step=3)   # the run resumes at epoch 3
    2
    """
    removed = 0
    for path in sorted(glob.glob(os.path.join(os.fspath(directory), EVENT_FILE_PATTERN))):
        kept, dropped, truncated = [], 0, False
        try:
            for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
                event = event_pb2.Event.FromString(record)
                if event.HasField("summary") and event.step >= from_step:
                    values = event.summary.value
                    if tag_prefixes is not None:
                        kept_values = [
                            v for v in values if not v.tag.startswith(tuple(tag_prefixes))
                        ]
                        if len(kept_values) == len(values):
                            kept.append(record)
                            continue
                        if kept_values:
                            del event.summary.value[:]
                            event.summary.value.extend(kept_values)
                            kept.append(event.SerializeToString())
                    dropped += 1
                else:
                    kept.append(record)
        except tf.errors.DataLossError:
            truncated = True
        if dropped or truncated:
            temporary = path + ".purge"
            with tf.io.TFRecordWriter(temporary) as writer:
                for record in kept:
                    writer.write(record)
            os.replace(temporary, path)
            removed += dropped
    return removed


def write_custom_scalars_layout(writer, categories):
    """Writes a custom-scalars layout: one chart per entry, all matching tags as lines.

    Args:
        writer: a `tf.summary` file writer.
        categories: `{category title: {chart title: tag regex}}`.
    """
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary

    layout = layout_pb2.Layout(
        category=[
            layout_pb2.Category(
                title=category,
                chart=[
                    layout_pb2.Chart(
                        title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex])
                    )
                    for title, regex in charts.items()
                ],
            )
            for category, charts in categories.items()
        ]
    )
    with writer.as_default():
        tf.summary.experimental.write_raw_pb(
            custom_scalar_summary.pb(layout).SerializeToString(), step=0
        )
    writer.flush()
