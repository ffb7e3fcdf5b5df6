"""Post-training int8 trial: ship int8 only if it is faster than fp32/bf16 AND >= 40 dB PSNR against fp32.

ONNX Runtime static quantization (QDQ, per-channel int8 weights, uint8 activations) calibrated on 3
tiles of the sample photos, scored on a 4th; embedded demo weights.
    gtasr-export --tile 64 --out /tmp/x && python benchmarks/int8_trial.py /tmp/x/gtasr_demo_tile64_fp32.onnx /tmp/int8.onnx
"""
import numpy as np, time, shutil, json
from onnxruntime.quantization import quantize_static, CalibrationDataReader, QuantType, QuantFormat
import onnxruntime as ort
from PIL import Image
from gtasr_deploy.model.schedule import up, unit_noise
import torch
import sys
src, dst = sys.argv[1], sys.argv[2]  # an fp32 graph of the embedded demo weights at tile 64; the int8 graph
T=64
def tiles():
    out=[]
    for f in ['samples/chelsea_lr.png','samples/coffee_lr.png']:
        rgb=np.asarray(Image.open(f).convert('RGB')).astype(np.float32)/255
        for (y,x) in [(0,0),(60,80)]:
            lq=np.ascontiguousarray(rgb[y:y+T,x:x+T].transpose(2,0,1)[None])*2-1
            xk=up(torch.from_numpy(lq)); xk+=unit_noise(tuple(xk.shape),0)
            out.append({"x_t":xk.numpy(),"lq":lq,"sigma":np.ones(1,np.float32),"norm_stats":np.zeros((2,816),np.float32),"norm_mix":np.zeros(1,np.float32)})
    return out
data=tiles()
class R(CalibrationDataReader):
    def __init__(s): s.it=iter(data[:3])
    def get_next(s): return next(s.it,None)
quantize_static(src,dst,R(),quant_format=QuantFormat.QDQ,activation_type=QuantType.QUInt8,weight_type=QuantType.QInt8,per_channel=True)
so=ort.SessionOptions(); so.intra_op_num_threads=2
a=ort.InferenceSession(src,so,providers=['CPUExecutionProvider']); b=ort.InferenceSession(dst,so,providers=['CPUExecutionProvider'])
feed=data[3]
ra=a.run(['sr'],feed)[0]; rb=b.run(['sr'],feed)[0]
ia=np.clip((ra+1)/2,0,1); ib=np.clip((rb+1)/2,0,1)
print('int8 vs fp32 PSNR (held-out tile, embedded weights):', 10*np.log10(1/np.mean((ia-ib)**2)))
for name,s in (('fp32',a),('int8',b),('fp32',a),('int8',b)):
    t=time.time(); [s.run(['sr'],feed) for _ in range(3)]; print(name, (time.time()-t)/3)
