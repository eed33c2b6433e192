/* Standalone probe, not part of the build.
 * The f16 1x8 panel tile (8 rows of 16-element chunks, one row of x) with three widenings:
 * `vcvtph2ps`; sign-extend + shift + mask (the 2^-112-scaled bits, scale folded into x);
 * and "pairs": one 32-byte load whose 32-bit lanes hold two f16, the low one widened as
 * (v << 16) >>a 3 & 0x8fffe000 and the high one as (v >>a 3) & 0x8fffe000 (no shuffle; a
 * packing would interleave the halves so that the lanes keep the canonical order). Plus a
 * plain read of the same bytes, and a mix of `vcvtph2ps` and pairs on alternate rows.
 * Timed only (the scaled forms' bits are checked in widening.c). 512 MiB on huge pages,
 * 8 passes each, interleaved (docs/BENCHMARKS.md, Zen 4, 2026-12-07 afternoon).
 *
 *     gcc -O3 -march=znver3 benches/probes/widening_pairs.c -o /tmp/pairs && /tmp/pairs
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
/* 1 row: 8 rows of a panel, each chunk 16 f16 */
static float hw1(const uint16_t*w,size_t np){float tot=0;for(size_t q=0;q<np;q++){const uint16_t*p=w+q*8*K;__m256 a[8];for(int j=0;j<8;j++)a[j]=_mm256_setzero_ps();
 for(int c=0;c<K;c+=16){const uint16_t*ch=p+c*8;__m256 x0=_mm256_load_ps(XB+c),x1=_mm256_load_ps(XB+c+8);
  for(int j=0;j<8;j++){a[j]=_mm256_fmadd_ps(x0,cvt_hw(ch+j*16),a[j]);a[j]=_mm256_fmadd_ps(x1,cvt_hw(ch+j*16+8),a[j]);}}
 __m256 t=_mm256_setzero_ps();for(int j=0;j<8;j++)t=_mm256_add_ps(t,a[j]);float o[8];_mm256_storeu_ps(o,t);tot+=o[0];}return tot;}
static float sc1(const uint16_t*w,size_t np){float tot=0;for(size_t q=0;q<np;q++){const uint16_t*p=w+q*8*K;__m256 a[8];for(int j=0;j<8;j++)a[j]=_mm256_setzero_ps();
 for(int c=0;c<K;c+=16){const uint16_t*ch=p+c*8;__m256 x0=_mm256_load_ps(XB+c),x1=_mm256_load_ps(XB+c+8);
  for(int j=0;j<8;j++){a[j]=_mm256_fmadd_ps(x0,cvt_sc(ch+j*16),a[j]);a[j]=_mm256_fmadd_ps(x1,cvt_sc(ch+j*16+8),a[j]);}}
 __m256 t=_mm256_setzero_ps();for(int j=0;j<8;j++)t=_mm256_add_ps(t,a[j]);float o[8];_mm256_storeu_ps(o,t);tot+=o[0];}return tot;}
/* packed pairs: one 32-byte load gives lo (<<16, >>3 arith, and) and hi (>>3 arith, and) */
static float pk1(const uint16_t*w,size_t np){float tot=0;const __m256i m=_mm256_set1_epi32(0x8fffe000);for(size_t q=0;q<np;q++){const uint16_t*p=w+q*8*K;__m256 a[8];for(int j=0;j<8;j++)a[j]=_mm256_setzero_ps();
 for(int c=0;c<K;c+=16){const uint16_t*ch=p+c*8;__m256 x0=_mm256_load_ps(XB+c),x1=_mm256_load_ps(XB+c+8);
  for(int j=0;j<8;j++){__m256i v=_mm256_loadu_si256((const __m256i*)(ch+j*16));
   __m256 lo=_mm256_castsi256_ps(_mm256_and_si256(_mm256_srai_epi32(_mm256_slli_epi32(v,16),3),m));
   __m256 hi=_mm256_castsi256_ps(_mm256_and_si256(_mm256_srai_epi32(v,3),m));
   a[j]=_mm256_fmadd_ps(x0,lo,a[j]);a[j]=_mm256_fmadd_ps(x1,hi,a[j]);}}
 __m256 t=_mm256_setzero_ps();for(int j=0;j<8;j++)t=_mm256_add_ps(t,a[j]);float o[8];_mm256_storeu_ps(o,t);tot+=o[0];}return tot;}
/* mixed: lo half via cvtph2ps of a shuffled? no: half rows hw, half rows pk */
static float mix1(const uint16_t*w,size_t np){float tot=0;const __m256i m=_mm256_set1_epi32(0x8fffe000);for(size_t q=0;q<np;q++){const uint16_t*p=w+q*8*K;__m256 a[8];for(int j=0;j<8;j++)a[j]=_mm256_setzero_ps();
 for(int c=0;c<K;c+=16){const uint16_t*ch=p+c*8;__m256 x0=_mm256_load_ps(XB+c),x1=_mm256_load_ps(XB+c+8);
  for(int j=0;j<8;j+=2){a[j]=_mm256_fmadd_ps(x0,cvt_hw(ch+j*16),a[j]);a[j]=_mm256_fmadd_ps(x1,cvt_hw(ch+j*16+8),a[j]);
   __m256i v=_mm256_loadu_si256((const __m256i*)(ch+(j+1)*16));
   __m256 lo=_mm256_castsi256_ps(_mm256_and_si256(_mm256_srai_epi32(_mm256_slli_epi32(v,16),3),m));
   __m256 hi=_mm256_castsi256_ps(_mm256_and_si256(_mm256_srai_epi32(v,3),m));
   a[j+1]=_mm256_fmadd_ps(x0,lo,a[j+1]);a[j+1]=_mm256_fmadd_ps(x1,hi,a[j+1]);}}
 __m256 t=_mm256_setzero_ps();for(int j=0;j<8;j++)t=_mm256_add_ps(t,a[j]);float o[8];_mm256_storeu_ps(o,t);tot+=o[0];}return tot;}
static float rd(const uint16_t*w,size_t np){__m256i s=_mm256_setzero_si256();const __m256i*p=(const __m256i*)w;size_t n=np*8*K/16;
 __m256i s1=s,s2=s,s3=s;for(size_t i=0;i<n;i+=4){s=_mm256_add_epi32(s,_mm256_load_si256(p+i));s1=_mm256_add_epi32(s1,_mm256_load_si256(p+i+1));s2=_mm256_add_epi32(s2,_mm256_load_si256(p+i+2));s3=_mm256_add_epi32(s3,_mm256_load_si256(p+i+3));}
 s=_mm256_add_epi32(_mm256_add_epi32(s,s1),_mm256_add_epi32(s2,s3));int o[8];_mm256_storeu_si256((__m256i*)o,s);return o[0];}
int main(){size_t bytes=(size_t)512<<20;char*buf=mmap(0,bytes,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);madvise(buf,bytes,MADV_HUGEPAGE);
 uint16_t*h=(uint16_t*)buf;{uint64_t st=88172645463325252ull;for(size_t i=0;i<bytes/2;i+=8){float f[8];for(int j=0;j<8;j++){st^=st<<13;st^=st>>7;st^=st<<17;float u=((st>>40)&0xffffff)/16777216.0f+((st>>16)&0xffffff)/16777216.0f+((st)&0xffff)/65536.0f-1.5f;f[j]=u*0.035f;}
 __m128i r=_mm256_cvtps_ph(_mm256_loadu_ps(f),0);_mm_storeu_si128((__m128i*)(h+i),r);}}
 for(int i=0;i<4*K;i++)XB[i]=1.0f/(i+1);
 size_t np=bytes/2/(8*K);const char*nm[]={"plain read","cvtph2ps","signext","pairs","mixed"};double best[5]={0};double all[5][8];
 for(int it=0;it<8;it++)for(int c=0;c<5;c++){double t0=now();const uint16_t*w=(uint16_t*)buf;
  sink+= c==0?rd(w,np): c==1?hw1(w,np): c==2?sc1(w,np): c==3?pk1(w,np):mix1(w,np);double g=bytes/(now()-t0)/1e9;all[c][it]=g;if(g>best[c])best[c]=g;}
 for(int c=0;c<5;c++){printf("%-10s best %.1f GB/s:",nm[c],best[c]);for(int it=0;it<8;it++)printf(" %.1f",all[c][it]);printf("\n");}}
