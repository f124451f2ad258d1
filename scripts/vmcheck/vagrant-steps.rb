# Prints what `vagrant up` would do inside the VM, read from the Vagrantfile itself (loaded,
# not grepped): the shell provisioners in order, the synced folder's guest path and the
# forwarded guest port, as JSON.  scripts/vm-check --vagrant replays them in a Debian guest.
#   ruby scripts/vmcheck/vagrant-steps.rb Vagrantfile
require "json"

STEPS = { "provisioners" => [], "guest_dir" => nil, "guest_port" => nil }

# Accepts every call of Vagrant's configuration DSL and keeps the three that matter here.
class Recorder < BasicObject
  def method_missing(name, *args, **kw, &blk)
    case name
    when :provision
      ::STEPS["provisioners"] << { "name" => args[0].to_s, "type" => kw[:type].to_s,
                                   "privileged" => kw.fetch(:privileged, true),
                                   "inline" => kw[:inline] }
    when :synced_folder
      ::STEPS["guest_dir"] = args[1] if args[0] == "." && !kw[:disabled]
    when :network
      ::STEPS["guest_port"] = kw[:guest] if args[0] == "forwarded_port"
    end
    blk&.call(::Recorder.new, ::Recorder.new)
    ::Recorder.new
  end

  def respond_to_missing?(*) = true
end

module Vagrant
  VERSION = "2.4.3"
  def self.require_version(*); end

  def self.configure(_version)
    yield ::Recorder.new
  end
end

load ARGV.fetch(0)
puts JSON.generate(STEPS)
