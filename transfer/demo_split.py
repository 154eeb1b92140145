"""Two disjoint tasks from the demo data set, for the transfer demo (configs/transfer/demo*.yaml):

* source: the four plumage patterns in their coarse grain (barred_coarse, striped_coarse, spotted_coarse,
  checkered_coarse), for pre-training;
* target: the same four patterns in their fine grain (barred_fine, ...), for fine-tuning, or for training from
  scratch as the comparison.

No class and no image is shared between the two tasks: the target asks for the same kind of knowledge (telling
plumage patterns apart) at another scale, as fine-tuning an ImageNet model on birds asks for related, not identical,
knowledge. The list files are written next to the demo's own
(paths relative to the demo root, labels renumbered 0..3):
    transfer_{source,target}_{train,val}.txt, transfer_{source,target}_classes.txt

    python -m transfer.demo_split --root demo_data
"""
import argparse
import os

SOURCE = ("barred_coarse", "striped_coarse", "spotted_coarse", "checkered_coarse")
TARGET = ("barred_fine", "striped_fine", "spotted_fine", "checkered_fine")


def _read_classes(root):
    with open(os.path.join(root, "classes.txt")) as f:
        return [line.strip() for line in f if line.strip()]


def write_task(root, task, classes):
    names = _read_classes(root)
    missing = [c for c in classes if c not in names]
    if missing:
        raise ValueError(f"{root}/classes.txt lacks {missing}; is this the demo data set (python -m common.demo_data)?")
    relabel = {names.index(c): i for i, c in enumerate(classes)}
    for split in ("train", "val"):
        rows = []
        with open(os.path.join(root, f"{split}_list.txt")) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and int(parts[1]) in relabel:
                    rows.append(" ".join([parts[0], str(relabel[int(parts[1])])] + parts[2:]))
        with open(os.path.join(root, f"transfer_{task}_{split}.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")
    with open(os.path.join(root, f"transfer_{task}_classes.txt"), "w") as f:
        f.write("\n".join(classes) + "\n")


def make_demo_split(root):
    write_task(root, "source", SOURCE)
    write_task(root, "target", TARGET)
    return root


def main(argv=None):
    p = argparse.ArgumentParser(description="write the source / target task lists of the transfer demo")
    p.add_argument("--root", default="demo_data", help="the demo data set (python -m common.demo_data)")
    a = p.parse_args(argv)
    make_demo_split(a.root)
    print(f"transfer demo lists written in {a.root}: source {', '.join(SOURCE)}; target {', '.join(TARGET)}")


if __name__ == "__main__":
    main()
