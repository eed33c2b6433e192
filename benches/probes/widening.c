/* Standalone probe, not part of the build.
 * f16 -> f32 widening inside the 1x8 and 2-row panel tiles: `vcvtph2ps`, an integer widening
 * with a multiply by 2^112, and one with the scale folded into x; checks first that the
 * widening with the multiply gives the bits of `vcvtph2ps` for every finite f16 (the folded
 * scale is timed only) (docs/BENCHMARKS.md, Zen 4).
 * Weights ~N(0, 0.02) as a trained model's; -DK=2816 for the down projection's rows.
 *
 *     gcc -O3 -march=znver3 benches/probes/widening.c -o /tmp/widening && /tmp/widening
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#ifndef K
#define K 1024
#endif
static float XB[4*K] __attribute__((aligned(64)));
volatile float sink;
static inline __m256 cvt_hw(const uint16_t*p){return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));}
static inline __m256 cvt_sc(const uint16_t*p){__m256i v=_mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i*)p));
 v=_mm256_slli_epi32(v,13);v=_mm256_and_si256(v,_mm256_set1_epi32(0x8fffe000));return _mm256_castsi256_ps(v);}
static inline __m256 cvt_int(const uint16_t*p){__m256i v=_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p));
 v=_mm256_slli_epi32(v,16);v=_mm256_srai_epi32(v,3);v=_mm256_and_si256(v,_mm256_set1_epi32(0x8fffe000));
 return _mm256_mul_ps(_mm256_castsi256_ps(v),_mm256_castsi256_ps(_mm256_set1_epi32(0x77800000)));} // 2^112
#define KER(NAME,CVT,MR) static float NAME(const uint16_t*w,size_t np){float tot=0; \
 for(size_t q=0;q<np;q++){const uint16_t*p=w+q*8*K; for(int h=0;h<(MR==1?1:2);h++){ const int NR=MR==1?8:4; __m256 a[MR][8]; for(int i=0;i<MR;i++)for(int j=0;j<NR;j++)a[i][j]=_mm256_setzero_ps(); \
  const uint16_t*pp=p+h*4*16; for(int c=0;c<K;c+=16){const uint16_t*ch=pp+c*8; for(int hh=0;hh<2;hh++){__m256 xv[MR];for(int i=0;i<MR;i++)xv[i]=_mm256_load_ps(XB+i*(K+16)+c+hh*8); \
   for(int j=0;j<NR;j++){__m256 wv=CVT(ch+j*16+hh*8);for(int i=0;i<MR;i++)a[i][j]=_mm256_fmadd_ps(xv[i],wv,a[i][j]);}}} \
  __m256 t=_mm256_setzero_ps();for(int i=0;i<MR;i++)for(int j=0;j<NR;j++)t=_mm256_add_ps(t,a[i][j]);float o[8];_mm256_storeu_ps(o,t);tot+=o[0];}} return tot;}
KER(sc1,cvt_sc,1) KER(sc2,cvt_sc,2) KER(hw1,cvt_hw,1) KER(int1,cvt_int,1) KER(hw2,cvt_hw,2) KER(int2,cvt_int,2)
int main(){size_t bytes=(size_t)512<<20;char*buf=mmap(0,bytes,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);madvise(buf,bytes,MADV_HUGEPAGE);
 uint16_t*h=(uint16_t*)buf; {uint64_t st=88172645463325252ull; for(size_t i=0;i<bytes/2;i+=8){float f[8];for(int j=0;j<8;j++){st^=st<<13;st^=st>>7;st^=st<<17;float u=((st>>40)&0xffffff)/16777216.0f+((st>>16)&0xffffff)/16777216.0f+((st)&0xffff)/65536.0f-1.5f;f[j]=u*0.035f;}
 __m128i r=_mm256_cvtps_ph(_mm256_loadu_ps(f),0);_mm_storeu_si128((__m128i*)(h+i),r);}} // all bit patterns incl denormals? mask inf/nan
 {size_t dn=0;for(size_t i=0;i<bytes/2;i++)if((h[i]&0x7c00)==0&&(h[i]&0x3ff))dn++;printf("denormal fraction %.5f\n",dn/(bytes/2.0));}
 for(int i=0;i<4*K;i++)XB[i]=1.0f/(i+1);
 // exactness check
 for(uint32_t v=0;v<65536;v++){if((v&0x7c00)==0x7c00)continue;uint16_t a[8]={v,v,v,v,v,v,v,v};__m256 r1=cvt_hw(a),r2=cvt_int(a);if(memcmp(&r1,&r2,32)){printf("mismatch %x\n",v);return 1;}}
 size_t np=bytes/2/(8*K);const char*nm[]={"cvtph2ps 1 row","int 1 row","cvtph2ps 2 rows","int 2 rows","scaled 1 row","scaled 2 rows"};double best[6]={0};
 for(int it=0;it<4;it++)for(int c=0;c<6;c++){double t0=now();const uint16_t*w=(uint16_t*)buf;
  sink+= c==0?hw1(w,np): c==1?int1(w,np): c==2?hw2(w,np): c==3?int2(w,np): c==4?sc1(w,np):sc2(w,np);double g=bytes/(now()-t0)/1e9;if(g>best[c])best[c]=g;}
 for(int c=0;c<6;c++)printf("%s: %.1f GB/s\n",nm[c],best[c]);}
