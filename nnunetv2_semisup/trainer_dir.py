"""Where nnU-Net finds the plugin's trainers, and the check that it is set up.

nnU-Net 2.8 looks up trainers named with ``-tr`` in the folders of the ``nnUNet_extTrainer`` variable. The folder
we hand out is ``nnunet_ext/``: it only re-exports the trainer classes by absolute import, because nnU-Net unloads
the modules it imported from that folder after the lookup (pointing it at the real code would break pickling).
"""
import os
import sys

TRAINER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")
EXPORT_HINT = "export nnUNet_extTrainer=$(nnUNetv2_semisup_trainer_dir)"


def ext_trainer_env_problem() -> str | None:
    """Describe what is wrong with ``nnUNet_extTrainer`` for this plugin, or None if it is set up correctly."""
    value = os.environ.get("nnUNet_extTrainer", "")
    if not value.strip():
        return (f"The environment variable nnUNet_extTrainer is not set, so nnUNetv2_train/--c/--val and "
                f"nnUNetv2_predict cannot find the nnunetv2_semisup trainers. Run: {EXPORT_HINT}")
    folders = [os.path.abspath(p) for p in value.split(os.pathsep) if p.strip()]
    if os.path.abspath(TRAINER_DIR) not in folders:
        return (f"nnUNet_extTrainer={value} does not contain the nnunetv2_semisup trainer folder {TRAINER_DIR}, so "
                f"nnUNetv2_train/--c/--val and nnUNetv2_predict cannot find (or cannot safely load) the plugin's "
                f"trainers. Run: {EXPORT_HINT}")
    return None


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_semisup_trainer_dir",
        description=f"Print the folder to put in nnUNet_extTrainer. Usage: {EXPORT_HINT}")
    parser.add_argument("--check", action="store_true",
                        help="instead of printing the folder, check that nnUNet_extTrainer contains it "
                             "(exit code 1 and an explanation if not)")
    args = parser.parse_args(argv)
    if args.check:
        problem = ext_trainer_env_problem()
        if problem:
            print(problem, file=sys.stderr)
            return 1
        print(f"nnUNet_extTrainer is set up: {TRAINER_DIR}")
        return 0
    print(TRAINER_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
