"""Record data/observe.pcapng from a real run of the lab (root, a running `basic` lab):

    sudo nattrack lab up --topo basic --mode kernel
    sudo ../../.venv/bin/python data/record.py data/observe.pcapng
    sudo nattrack lab down

h1 pings srv, asks srv's UDP echo service twice 3 s apart from port 40000, fetches a page
with curl.  `nattrack capture` records what both router interfaces carry, in and out; a
replay wants only what arrives, so the frames r itself sent (source MAC = r's) are left out.
"""
import sys
import threading
import time

from nattrack.lab.client import LabClient
from nattrack.packet.pcapio import CaptureReader, PcapngWriter

IFACES = ("ntr-lan", "ntr-wan")


def main(out: str) -> None:
    lab = LabClient()
    macs = {}
    for ifname in IFACES:
        line = lab.exec("r", ["ip", "-o", "link", "show", ifname], check=True).stdout
        macs[ifname] = bytes.fromhex(line.split("link/ether ")[1].split()[0].replace(":", ""))
    raw = out + ".both"
    started = threading.Event()
    done = threading.Event()
    t = threading.Thread(target=lambda: lab.capture(raw, started=started.set, stop=done.is_set))
    t.start()
    started.wait(10)
    time.sleep(0.5)
    lab.exec("h1", ["ping", "-c", "1", "-n", "203.0.113.10"], check=True)
    for word in ("question-1", "question-2"):
        lab.exec("h1", ["nc", "-u", "-w", "1", "-p", "40000", "203.0.113.10", "7"],
                 input=word + "\n", check=True)
        time.sleep(3)
    lab.exec("h1", ["curl", "-s", "203.0.113.10"], check=True)
    time.sleep(1)
    done.set()
    t.join()
    kept = 0
    with PcapngWriter(out) as w:
        for name in IFACES:
            w.add_interface(name)
        for frame in CaptureReader(raw):
            if frame.iface in macs and bytes(frame.data[6:12]) != macs[frame.iface]:
                w.write(frame.ts, frame.iface, frame.data)
                kept += 1
    import os
    os.unlink(raw)
    print(f"{out}: {kept} frames arriving at r")


if __name__ == "__main__":
    main(sys.argv[1])
