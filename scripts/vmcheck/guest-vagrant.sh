#!/bin/bash
# Inside a vm-check --vagrant guest, started once at boot: what `vagrant up` does in a new
# VM -- the box's vagrant user, the synced copy of the repository, then the Vagrantfile's
# own shell provisioners in order (written to /root/vagrant-steps by scripts/vm-check from
# scripts/vmcheck/vagrant-steps.rb) -- and then the JupyterLab address once the notebook
# service prints it.  The host fetches that address through qemu's forwarded port.
port=/dev/virtio-ports/vmcheck
for _ in $(seq 100); do [[ -e $port ]] && break; sleep 0.2; done
exec >"$port" 2>&1
fail() { echo "VMCHECK-NOTEBOOK none ($1)"; sync; systemctl --no-block poweroff; exit 1; }

set -a; . /etc/nattrack-vmcheck.env; set +a     # this host's pip configuration
echo "== vm-check guest (Vagrant's provisioning): kernel $(uname -r)," \
     "$(. /etc/os-release; echo "$PRETTY_NAME")"
guest_dir=$(cat /root/vagrant-steps/guest-dir)
useradd --create-home --shell /bin/bash vagrant || fail "useradd"    # as a box has it
mkdir -p "$guest_dir"
cp -a /root/nattrack/. "$guest_dir"/                                 # the rsync'ed copy
chown -R vagrant:vagrant /home/vagrant

for step in /root/vagrant-steps/[0-9]*.sh; do
    echo "== provisioner ${step##*/}"
    # Vagrant's shell provisioner: the inline script uploaded and run as root by `bash -l`.
    (cd /home/vagrant && bash -l "$step") || fail "provisioner ${step##*/} failed"
done

for _ in $(seq 300); do
    url=$(nattrack-notebook-url 2>/dev/null)
    [[ -n $url ]] && break
    sleep 2
done
[[ -n $url ]] || fail "the notebook service printed no address in 10 min"
systemctl --no-pager --lines=0 status nattrack-notebook.service | head -n 3
echo "VMCHECK-NOTEBOOK $url"
sleep infinity                                  # the host stops the VM once it has looked
