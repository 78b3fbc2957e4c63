"""The largest functions of a wasm module, by the size of their code. Envoy's V8 compiles
every function with TurboFan when the filter loads, and the compile memory of the largest ones
stays in Envoy's allocator (see filter/core/src/lib.rs): keep tollgate's functions under about
16 KB. Names need a build that keeps them:

    CARGO_PROFILE_RELEASE_STRIP=false cargo build --release --target wasm32-wasip1 \\
      -p tollgate --target-dir /tmp/tollgate-named
    python3 tests/bench/wasm_functions.py /tmp/tollgate-named/wasm32-wasip1/release/tollgate.wasm 20
"""

import sys


def leb(data: bytes, i: int) -> tuple[int, int]:
    """An unsigned LEB128 number at `i`, and the index after it."""
    value = shift = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def skip_limits(data: bytes, i: int) -> int:
    flags, i = leb(data, i)
    _, i = leb(data, i)
    if flags & 1:
        _, i = leb(data, i)
    return i


def functions(data: bytes) -> tuple[list[int], dict[int, str], int]:
    """Code sizes of the module's functions, their names (function index → name) and the
    number of imported functions (which come first in the index space)."""
    if data[:4] != b"\0asm":
        raise ValueError("not a wasm module")
    i, imported, sizes, names = 8, 0, [], {}
    while i < len(data):
        section = data[i]
        length, i = leb(data, i + 1)
        end = i + length
        if section == 2:  # imports
            count, j = leb(data, i)
            for _ in range(count):
                for _ in range(2):  # module and field names
                    n, j = leb(data, j)
                    j += n
                kind = data[j]
                j += 1
                if kind == 0:
                    _, j = leb(data, j)
                    imported += 1
                elif kind == 1:
                    j = skip_limits(data, j + 1)
                elif kind == 2:
                    j = skip_limits(data, j)
                elif kind == 3:
                    j += 2
        elif section == 10:  # code
            count, j = leb(data, i)
            for _ in range(count):
                n, j = leb(data, j)
                sizes.append(n)
                j += n
        elif section == 0:  # custom: the "name" section
            n, j = leb(data, i)
            if data[j:j + n] == b"name":
                j += n
                while j < end:
                    sub = data[j]
                    n, j = leb(data, j + 1)
                    if sub == 1:
                        count, k = leb(data, j)
                        for _ in range(count):
                            index, k = leb(data, k)
                            m, k = leb(data, k)
                            names[index] = data[k:k + m].decode(errors="replace")
                            k += m
                    j += n
        i = end
    return sizes, names, imported


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    sizes, names, imported = functions(open(sys.argv[1], "rb").read())
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    print(f"{len(sizes)} functions, {sum(sizes)} bytes of code")
    for k in sorted(range(len(sizes)), key=lambda k: -sizes[k])[:top]:
        print(f"{sizes[k]:8} {names.get(k + imported, '?')[:140]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
