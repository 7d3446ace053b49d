// AudioWorklet processor of the nnfp page: forwards the microphone's (down-mixed mono) samples
// to the page in blocks of 4096 (render quanta are 128 samples: fewer, larger messages).
class NnfpRecorder extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(4096);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      let read = 0;
      while (read < channel.length) {
        const n = Math.min(channel.length - read, this.block.length - this.filled);
        this.block.set(channel.subarray(read, read + n), this.filled);
        this.filled += n;
        read += n;
        if (this.filled === this.block.length) {
          this.port.postMessage(this.block);
          this.block = new Float32Array(this.block.length);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("nnfp-recorder", NnfpRecorder);
